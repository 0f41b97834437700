"""A simulated KServe v0.20 control plane on Knative, for tests, spoken to by the real `kubernetes` client.

The controller follows KServe v0.20.0's code (kserve/kserve, tag v0.20.0, commit 1fb78105) rule by rule;
each rule names the upstream file and function it follows (paths under pkg/ unless said otherwise):
- `controller/v1beta1/inferenceservice/controller.go` Reconcile: deployment mode, the predictor, the
  cross-component conditions, the ingress, `updateStatus`;
- `controller/v1beta1/inferenceservice/components/predictor.go` Reconcile / buildPredictorResources /
  reconcileKnativeDeployment: what goes into the Knative Service's revision template;
- `controller/v1beta1/inferenceservice/reconcilers/knative/ksvc_reconciler.go` createKnativeService
  (the traffic targets), Reconcile / semanticEquals (when the Knative Service is written, and which of
  its statuses KServe reads back);
- `apis/serving/v1beta1/inference_service_status.go` PropagateStatus (rolled-out revisions, conditions,
  traffic, observedGeneration) and the condition set;
- `controller/v1beta1/inferenceservice/reconcilers/ingress/ingress_reconciler.go` Reconcile (URL);
- `apis/serving/v1beta1/inference_service_validation.go` (the validating webhook).
- `apis/serving/v1beta1/component.go` validateLogger, `components/component.go` addLoggerAnnotations, and
  KServe's agent (`pkg/logger/worker.go`): a revision whose template has the logger annotations POSTs
  each request and each 200 response to the sink URL as a CloudEvent (binary mode, `ce-*` headers).
Knative Serving (1.21) is reduced to what KServe reads: a Configuration creates a revision when the
template changes, the Route resolves `latestRevision: true` to the latest *ready* revision, and the
Service status carries both, with its own generation.

- **API server** (127.0.0.1): the Kubernetes REST paths of `serving.kserve.io/v1beta1`
  InferenceServices (GET/POST/PATCH/DELETE, list), `/version` and discovery. Every InferenceService
  written is validated strictly against the KServe CRD in ../shared/schemas (`workflows.validate`),
  plus KServe's validating webhook and Kubernetes' metadata rules. PATCH takes JSON merge patches only
  (RFC 7386); `status` is a subresource, so writes never set it. The controller lags writes by
  `reconcile_delay_s` (a read right after a write shows the old status, and quick successive writes
  are reconciled together, as on a cluster).
- **Data plane**: each revision gets a queue-proxy (a tiny HTTP proxy where faults are injected and
  requests are counted) in front of a REAL model server: for `predictor.model` (TF Serving's stand-in)
  `fashion-pipeline serve --storage-uri` without its version header, as TF Serving answers; for a custom
  predictor, the container's own command, run after a storage initializer copied the storageUri to a
  local /mnt/models. Model servers are shared between revisions with the same spec (one process per
  model, to keep tests fast). An ingress on 127.0.0.1 routes by Host header like Kourier:
  `<name>-predictor.<ns>.<domain>` splits by the traffic status, `<tag>-<name>-predictor...` goes to the
  tagged revision. With `direct_urls(namespace)`, tag URLs are the queue-proxies' own addresses.

Faults (`inject_fault`), per namespace and storageUri or revision number: `never_ready` (no model
server is started), `errors` (the queue-proxy answers 500), `wrong_classes` (the queue-proxy shifts
every `class_id`).
"""

from __future__ import annotations

import copy
import http.client
import http.server
import itertools
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from steps.registry import MODEL_NAME
from steps.serving import protocol
from steps.storage import open_store
from workflows.validate import Validator

REPO = Path(__file__).resolve().parent.parent
SCHEMAS = REPO.parent / "shared" / "schemas"
GROUP, VERSION, PLURAL, KIND = "serving.kserve.io", "v1beta1", "inferenceservices", "InferenceService"
API_VERSION = f"{GROUP}/{VERSION}"
FAULTS = ("never_ready", "errors", "wrong_classes")
TAG_ROUTING = "serving.kserve.io/enable-tag-routing"  # constants.EnableRoutingTagAnnotationKey
DEPLOYMENT_MODE = "serving.kserve.io/deploymentMode"
STORAGE_INITIALIZER_SOURCE_URI = "internal.serving.kserve.io/storage-initializer-sourceuri"
# constants.LoggerInternalAnnotationKey and friends: what addLoggerAnnotations puts on the revision template.
LOGGER = "internal.serving.kserve.io/logger"
LOGGER_SINK_URL = "internal.serving.kserve.io/logger-sink-url"
LOGGER_MODE = "internal.serving.kserve.io/logger-mode"
LOGGER_MODES = ("all", "request", "response")  # v1beta1 LogAll, LogRequest, LogResponse
CUSTOM_CONTAINER = "kserve-container"  # constants.InferenceServiceContainerName
STORAGE_URI_ENV = "STORAGE_URI"  # constants.CustomSpecStorageUriEnvVarKey
MODEL_MOUNT = "/mnt/models"  # constants.DefaultModelLocalMountPath
# constants.ServiceAnnotationDisallowedList: kept out of the revision template.
ANNOTATION_DISALLOWED = frozenset(
    {
        "autoscaling.knative.dev/min-scale",
        "autoscaling.knative.dev/max-scale",
        STORAGE_INITIALIZER_SOURCE_URI,
        "kubectl.kubernetes.io/last-applied-configuration",
        "modelFormat",
    }
)
MANAGED_KSVC_ANNOTATIONS = frozenset({"serving.knative.dev/rollout-duration"})  # ksvc_reconciler.go
PREDICTOR_IMPLEMENTATIONS = (
    "model",
    "tensorflow",
    "sklearn",
    "xgboost",
    "pytorch",
    "triton",
    "onnx",
    "pmml",
    "lightgbm",
    "paddle",
    "huggingface",
)
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
PATH = re.compile(rf"^/apis/{re.escape(GROUP)}/{VERSION}/namespaces/([^/]+)/{PLURAL}(?:/([^/]+))?$")
# Argo Workflows' CRD on the same API server (what the drop reconciler creates).
ARGO_API_VERSION = "argoproj.io/v1alpha1"
WORKFLOW_PATH = re.compile(rf"^/apis/{re.escape(ARGO_API_VERSION)}/namespaces/([^/]+)/workflows(?:/([^/]+))?$")
ENV_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- the data plane -----------------------------------------------------------------------------


class Backend:
    """A real model server process: the runtime a revision's pod would run."""

    def __init__(self, argv: list[str], port: int, ready_path: str, log_path: Path) -> None:
        self.port = port
        self.ready_path = ready_path
        self.log_path = log_path
        self.ready = False
        self.failed: str | None = None
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT)
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        while self.proc.poll() is None:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                conn.request("GET", self.ready_path)
                if conn.getresponse().status == 200:
                    self.ready = True
                    return
            except OSError:
                pass
            time.sleep(0.1)
        tail = self.log_path.read_text(errors="replace").strip().splitlines()[-1:] if self.log_path.exists() else []
        self.failed = f"model server exited with {self.proc.returncode}: {' '.join(tail)}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def _forward(
    handler: http.server.BaseHTTPRequestHandler, port: int, rewrite: Any = None, drop: frozenset[str] = frozenset()
) -> tuple[bytes, int, bytes] | None:
    """Pass the request on to 127.0.0.1:port and its answer back (optionally rewriting a JSON body).

    Returns what crossed: the request body, the answer's status and body (None if the upstream failed).
    """
    length = int(handler.headers.get("Content-Length") or 0)
    body = handler.rfile.read(length) if length else None
    headers = {k: v for k, v in handler.headers.items() if k.lower() not in ("host", "connection")}
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request(handler.command, handler.path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
    except OSError as exc:
        _send(handler, 503, {"error": f"upstream unavailable: {exc}"})
        return None
    if rewrite is not None and response.status == 200:
        data = rewrite(data)
    handler.send_response(response.status)
    skipped = {"content-length", "connection", "transfer-encoding", "date", "server"} | drop
    for key, value in response.getheaders():
        if key.lower() not in skipped:
            handler.send_header(key, value)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)
    return body or b"", response.status, data


def _send(handler: http.server.BaseHTTPRequestHandler, code: int, body: Any) -> None:
    data = json.dumps(body).encode()
    handler.send_response(code)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def _shift_classes(data: bytes) -> bytes:
    """The wrong-classes fault: every prediction names the next class (probabilities rotated to match)."""
    v1 = protocol.CODECS[protocol.Protocol.V1]
    answer = v1.from_bytes(data, {})
    shifted = v1.respond(np.roll(answer.probabilities, 1, axis=1), (answer.class_ids + 1) % 10)
    return json.dumps(shifted).encode()


class _Quiet(http.server.BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


# TF Serving's answers name no model version: its stand-in's headers are dropped.
_TF_SERVING_DROPS = frozenset({protocol.VERSION_HEADER.lower(), protocol.ROLE_HEADER.lower()})


@dataclass
class Revision:
    """A Knative revision: its template, its model server and its queue-proxy."""

    name: str
    number: int
    template: dict[str, Any]
    storage_uri: str
    runtime: str  # "tensorflow" (TF Serving's stand-in) or "custom"
    fault: str | None
    backend: Backend | None
    proxy: http.server.ThreadingHTTPServer | None = None
    served: int = 0  # requests the queue-proxy passed to the model server
    logged: int = 0  # CloudEvents the agent delivered to the logger's sink
    log_errors: int = 0

    @property
    def ready(self) -> bool:
        return self.backend is not None and self.backend.ready and self.fault != "never_ready"

    @property
    def failure(self) -> str | None:
        return self.backend.failed if self.backend is not None else None

    @property
    def proxy_url(self) -> str:
        assert self.proxy is not None
        return f"http://127.0.0.1:{self.proxy.server_address[1]}"

    def start_proxy(self) -> None:
        revision = self

        class QueueProxy(_Quiet):
            def _handle(self) -> None:
                if revision.fault == "errors":
                    _send(self, 500, {"error": f"injected fault: revision {revision.name} fails every request"})
                elif not revision.ready or revision.backend is None:
                    _send(self, 503, {"error": f"revision {revision.name} is not ready"})
                else:
                    revision.served += 1
                    rewrite = _shift_classes if revision.fault == "wrong_classes" else None
                    drop = _TF_SERVING_DROPS if revision.runtime == "tensorflow" else frozenset()
                    exchange = _forward(self, revision.backend.port, rewrite, drop)
                    if exchange is not None and self.command == "POST":
                        revision.agent_log(self.headers, *exchange)

            do_GET = do_POST = _handle

        self.proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), QueueProxy)
        # A short poll: stopping the simulator shuts dozens of these down one after another (0.5 s each by default).
        threading.Thread(target=self.proxy.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def agent_log(self, headers: Any, request: bytes, status: int, response: bytes) -> None:
        """KServe's agent (pkg/logger): the request, and a 200 response, as CloudEvents (binary mode) to the sink."""
        annotations = self.template.get("annotations") or {}
        url, mode = annotations.get(LOGGER_SINK_URL), annotations.get(LOGGER_MODE, "all")
        if annotations.get(LOGGER) != "true" or not url:
            return
        event_id = headers.get("Ce-Id") or str(uuid.uuid4())
        labels = self.template.get("labels") or {}
        common = {
            "ce-specversion": "1.0",
            "ce-id": event_id,
            "ce-source": f"http://localhost:9081/{self.name}-deployment",
            "ce-inferenceservicename": labels.get("serving.kserve.io/inferenceservice", ""),
            "ce-component": "predictor",
            "ce-endpoint": "",
            "Content-Type": headers.get("Content-Type") or "application/json",
        }
        events = []
        if mode in ("all", "request"):
            events.append(({**common, "ce-type": "org.kubeflow.serving.inference.request"}, request))
        if mode in ("all", "response") and status == 200:
            events.append(({**common, "ce-type": "org.kubeflow.serving.inference.response"}, response))

        def send() -> None:  # the agent logs off the request path, through its worker queue
            for event_headers, body in events:
                try:
                    parts = urlsplit(url)
                    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=10)
                    path = parts.path or "/"
                    conn.request("POST", f"{path}?{parts.query}" if parts.query else path, body, event_headers)
                    conn.getresponse().read()
                    self.logged += 1
                except OSError:
                    self.log_errors += 1

        threading.Thread(target=send, daemon=True).start()

    def stop_proxy(self) -> None:
        if self.proxy is not None:
            self.proxy.shutdown()
            self.proxy.server_close()


# -- the control plane --------------------------------------------------------------------------


@dataclass
class _KnativeService:
    """The Knative Service KServe owns: spec (revision template, traffic), generation, and Knative's status."""

    name: str
    generation: int
    annotations: dict[str, str]
    template: dict[str, Any]
    traffic: list[dict[str, Any]]
    revisions: list[Revision] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)

    def revision(self, name: str) -> Revision | None:
        return next((r for r in self.revisions if r.name == name), None)


@dataclass
class _Service:
    obj: dict[str, Any]  # as stored: no status
    status: dict[str, Any] = field(default_factory=dict)
    ksvc: _KnativeService | None = None
    changed_at: float = 0.0
    credit: dict[str, int] = field(default_factory=dict)  # smooth weighted round-robin at the ingress

    @property
    def name(self) -> str:
        return str(self.obj["metadata"]["name"])

    @property
    def namespace(self) -> str:
        return str(self.obj["metadata"]["namespace"])

    @property
    def revisions(self) -> list[Revision]:
        return self.ksvc.revisions if self.ksvc else []

    def revision(self, name: str) -> Revision | None:
        return self.ksvc.revision(name) if self.ksvc else None


class Rejected(Exception):
    def __init__(self, code: int, reason: str, message: str, causes: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.causes = code, reason, message, causes or []


class KServeSim:
    """The API server, controller and data plane; `with KServeSim(workdir) as sim:` stops everything after.

    `default_mode` is the inferenceservice-config ConfigMap's `defaultDeploymentMode`: KServe v0.20 ships
    "Serverless" (config/configmap/inferenceservice.yaml), which NewDeployConfig reads as Knative; the code
    default without a ConfigMap entry is Standard. `domain` is Knative's: svc.cluster.local since 1.8.
    """

    def __init__(
        self,
        workdir: Path,
        schemas_dir: Path = SCHEMAS,
        reconcile_delay_s: float = 0.2,
        default_mode: str = "Serverless",
        domain: str = "svc.cluster.local",
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.validator = Validator(schemas_dir)
        self.reconcile_delay_s = reconcile_delay_s
        self.default_mode = _parse_mode(default_mode)
        self.domain = domain
        self.requests: list[dict[str, Any]] = []
        self._services: dict[tuple[str, str], _Service] = {}
        self._backends: dict[str, Backend] = {}
        self._faults: dict[tuple[str, str | int], str] = {}
        self.workflows: dict[tuple[str, str], dict[str, Any]] = {}
        self._workflow_templates: dict[tuple[str, str], dict[str, Any]] = {}
        self._failing_workflow_creates = 0
        self._direct: set[str] = set()
        self._lock = threading.RLock()
        self._uids = itertools.count(1)
        self._resource_versions = itertools.count(1)
        self.api = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._api_handler())
        self.ingress = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._ingress_handler())
        for server in (self.api, self.ingress):
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api.server_address[1]}"

    @property
    def ingress_url(self) -> str:
        return f"http://127.0.0.1:{self.ingress.server_address[1]}"

    def __enter__(self) -> KServeSim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        for server in (self.api, self.ingress):
            server.shutdown()
            server.server_close()
        with self._lock:
            for service in self._services.values():
                for revision in service.revisions:
                    revision.stop_proxy()
            self._services.clear()
            for backend in self._backends.values():  # all told first: they stop side by side
                if backend.proc.poll() is None:
                    backend.proc.terminate()
            for backend in self._backends.values():
                backend.stop()
            self._backends.clear()

    # -- what tests set and read ----------------------------------------------------------------

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        """A kubeconfig pointing at this API server, without credentials (it takes none)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kserve-sim", "cluster": {"server": self.api_url}}],
            "users": [{"name": "tester", "user": {}}],
            "contexts": [
                {"name": "kserve-sim", "context": {"cluster": "kserve-sim", "user": "tester", "namespace": namespace}}
            ],
            "current-context": "kserve-sim",
        }
        path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        return path

    def inject_fault(
        self, namespace: str, fault: str, storage_uri: str | None = None, revision: int | None = None
    ) -> None:
        """Make revisions misbehave: those created later from `storage_uri`, or revision number `revision` (now too)."""
        if fault not in FAULTS or (storage_uri is None) == (revision is None):
            raise ValueError(f"inject_fault needs one of {FAULTS} and exactly one of storage_uri or revision")
        with self._lock:
            key: str | int = storage_uri if storage_uri is not None else revision  # type: ignore[assignment]
            self._faults[(namespace, key)] = fault
            if revision is not None:
                for service in self._services.values():
                    for rev in service.revisions:
                        if service.namespace == namespace and rev.number == revision:
                            rev.fault = fault

    def start_model_server(self, storage_uri: str) -> None:
        """Start TF Serving's stand-in for a storageUri ahead of its first revision (like a pre-pulled image)."""
        with self._lock:
            if not self._live(self._tf_serving_key(storage_uri)):
                self._start(self._tf_serving_key(storage_uri), *self._tf_serving(storage_uri))

    def wait_model_servers(self, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while not all(b.ready or b.failed for b in self._backends.values()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"model servers not ready after {timeout_s}s (logs in {self.workdir})")
            time.sleep(0.1)
        failed = [b.failed for b in self._backends.values() if b.failed]
        if failed:
            raise RuntimeError(f"model server failed: {failed[0]}")

    def direct_urls(self, namespace: str) -> None:
        """Tag URLs in `namespace` point straight at the revisions (no Host header needed)."""
        self._direct.add(namespace)

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The object as the API would answer now, reconciled (no controller lag)."""
        with self._lock:
            service = self._services.get((namespace, name))
            return self._view(service) if service is not None else None

    def revision(self, namespace: str, name: str, revision: str) -> Revision | None:
        with self._lock:
            service = self._services.get((namespace, name))
            return service.revision(revision) if service else None

    def revisions(self, namespace: str, name: str) -> list[Revision]:
        with self._lock:
            service = self._services.get((namespace, name))
            return list(service.revisions) if service else []

    def traffic_by_storage_uri(self, namespace: str, name: str) -> dict[str, int]:
        """Where the traffic goes, by model: storageUri -> percent (revisions with a share only)."""
        isvc = self.get(namespace, name)
        shares: dict[str, int] = {}
        for entry in ((isvc or {}).get("status", {}).get("components", {}).get("predictor", {}).get("traffic")) or []:
            rev = self.revision(namespace, name, entry["revisionName"])
            if entry.get("percent") and rev is not None:
                shares[rev.storage_uri] = shares.get(rev.storage_uri, 0) + int(entry["percent"])
        return shares

    def served_by_storage_uri(self, namespace: str, name: str) -> dict[str, int]:
        """Requests each model has answered so far, through any URL (summed over its revisions)."""
        served: dict[str, int] = {}
        for revision in self.revisions(namespace, name):
            if revision.served:
                served[revision.storage_uri] = served.get(revision.storage_uri, 0) + revision.served
        return served

    def host(self, namespace: str, name: str, tag: str | None = None) -> str:
        """The Host header the ingress routes: the predictor's URL host, or one tagged revision's."""
        base = f"{name}-predictor.{namespace}.{self.domain}"
        return f"{tag}-{base}" if tag else base

    # -- the API server -------------------------------------------------------------------------

    def _api_handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        sim = self

        class Api(_Quiet):
            def _handle(self) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode(errors="replace")
                sim.requests.append(
                    {
                        "method": self.command,
                        "path": url.path,
                        "query": {k: v[-1] for k, v in parse_qs(url.query).items()},
                        "content_type": content_type,
                        "body": body,
                    }
                )
                try:
                    code, answer = sim._route(self.command, url.path, content_type, body)
                except Rejected as exc:
                    code, answer = exc.code, _status_body(exc)
                _send(self, code, answer)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _handle

        return Api

    def _route(self, method: str, path: str, content_type: str, body: Any) -> tuple[int, Any]:
        discovery = self._discovery(path)
        if discovery is not None and method == "GET":
            return 200, discovery
        workflow = WORKFLOW_PATH.match(path)
        if workflow is not None:
            with self._lock:
                namespace, name = workflow.groups()
                return self._workflow_route(method, namespace, name, body)
        match = PATH.match(path)
        if match is None:
            raise Rejected(404, "NotFound", f"the server could not find the requested resource ({method} {path})")
        namespace, name = match.groups()
        with self._lock:
            if name is None and method == "GET":
                return 200, self._list(namespace)
            if name is None and method == "POST":
                return 201, self._create(namespace, body)
            if name is not None and method == "GET":
                return 200, self._view(self._existing(namespace, name), lag=True)
            if name is not None and method == "PATCH":
                return 200, self._patch(namespace, name, content_type, body)
            if name is not None and method == "DELETE":
                return 200, self._delete(namespace, name)
        raise Rejected(405, "MethodNotAllowed", f"{method} is not supported on {path} by the simulator")

    def _discovery(self, path: str) -> Any:
        resources = {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": API_VERSION,
            "resources": [
                {
                    "name": PLURAL,
                    "singularName": "inferenceservice",
                    "namespaced": True,
                    "kind": KIND,
                    "shortNames": ["isvc"],
                    "verbs": ["delete", "get", "list", "patch", "create"],
                },
                {"name": f"{PLURAL}/status", "singularName": "", "namespaced": True, "kind": KIND, "verbs": ["get"]},
            ],
        }
        version = {"groupVersion": API_VERSION, "version": VERSION}
        group = {"name": GROUP, "versions": [version], "preferredVersion": version}
        return {
            "/version": {"major": "1", "minor": "33", "gitVersion": "v1.33.0-kserve-sim", "platform": "linux/amd64"},
            "/api": {"kind": "APIVersions", "versions": ["v1"]},
            "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": [group]},
            f"/apis/{GROUP}": {"kind": "APIGroup", "apiVersion": "v1", **group},
            f"/apis/{API_VERSION}": resources,
        }.get(path)

    def _existing(self, namespace: str, name: str) -> _Service:
        service = self._services.get((namespace, name))
        if service is None:
            raise Rejected(404, "NotFound", f'{PLURAL}.{GROUP} "{name}" not found')
        return service

    def _list(self, namespace: str) -> dict[str, Any]:
        items = [self._view(s, lag=True) for (ns, _), s in sorted(self._services.items()) if ns == namespace]
        return {
            "apiVersion": API_VERSION,
            "kind": "InferenceServiceList",
            "metadata": {"resourceVersion": str(next(self._resource_versions))},
            "items": items,
        }

    def _create(self, namespace: str, body: Any) -> dict[str, Any]:
        obj = self._decode(body)
        metadata = obj.setdefault("metadata", {})
        name = metadata.get("name")
        if metadata.get("namespace") not in (None, namespace):
            raise Rejected(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the request",
            )
        if isinstance(name, str) and (namespace, name) in self._services:
            raise Rejected(409, "AlreadyExists", f'{PLURAL}.{GROUP} "{name}" already exists')
        metadata.update(
            namespace=namespace,
            uid=str(uuid.UUID(int=next(self._uids))),
            resourceVersion=str(next(self._resource_versions)),
            generation=1,
            creationTimestamp=_now(),
        )
        self._admit(obj, old_status=None)
        service = _Service(obj=obj, changed_at=time.monotonic())
        self._services[(namespace, obj["metadata"]["name"])] = service
        return self._view(service, lag=True)

    def _patch(self, namespace: str, name: str, content_type: str, body: Any) -> dict[str, Any]:
        if content_type != "application/merge-patch+json":
            raise Rejected(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format ({content_type or 'none'}); "
                "the simulator accepts application/merge-patch+json",
            )
        service = self._existing(namespace, name)
        if not isinstance(body, dict):
            raise Rejected(400, "BadRequest", "a merge patch must be a JSON object")
        current = service.obj
        merged = merge_patch(current, {k: v for k, v in body.items() if k != "status"})
        for key in ("name", "namespace", "uid", "creationTimestamp", "generation", "resourceVersion"):
            merged.setdefault("metadata", {})[key] = current["metadata"][key]
        self._admit(merged, old_status=service.status)
        if merged == current:
            return self._view(service, lag=True)
        if merged.get("spec") != current.get("spec"):
            merged["metadata"]["generation"] = current["metadata"]["generation"] + 1
        merged["metadata"]["resourceVersion"] = str(next(self._resource_versions))
        service.obj = merged
        service.changed_at = time.monotonic()
        return self._view(service, lag=True)

    def _delete(self, namespace: str, name: str) -> dict[str, Any]:
        service = self._existing(namespace, name)
        for revision in service.revisions:
            revision.stop_proxy()
        del self._services[(namespace, name)]
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {"name": name, "group": GROUP, "kind": PLURAL, "uid": service.obj["metadata"]["uid"]},
        }

    def _decode(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise Rejected(400, "BadRequest", "the request body is not a JSON object")
        if body.get("apiVersion") != API_VERSION or body.get("kind") != KIND:
            raise Rejected(
                400,
                "BadRequest",
                f"expected apiVersion {API_VERSION} kind {KIND}, got {body.get('apiVersion')} {body.get('kind')}",
            )
        return {k: copy.deepcopy(v) for k, v in body.items() if k != "status"}

    def _admit(self, obj: dict[str, Any], old_status: dict[str, Any] | None) -> None:
        """Kubernetes' metadata rules, the CRD schema (strict) and KServe's validating webhook."""
        name = obj.get("metadata", {}).get("name")
        causes: list[tuple[str, str]] = []
        if not isinstance(name, str) or not name:
            causes.append(("metadata.name", "Required value: name is required"))
        elif not DNS_1035.match(name) or len(name) > 63:
            causes.append(
                (
                    "metadata.name",
                    f'Invalid value: "{name}": a DNS-1035 label must consist of lower case '
                    "alphanumeric characters or '-', start with an alphabetic character",
                )
            )
        for key in ("annotations", "labels"):
            values = obj.get("metadata", {}).get(key)
            if values is not None and (
                not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values())
            ):
                causes.append((f"metadata.{key}", "Invalid value: values must be strings"))
        causes += [(p.path.removeprefix("$."), p.message) for p in self.validator.validate(obj)]
        if causes:
            detail = "; ".join(f"{path}: {message}" for path, message in causes)
            raise Rejected(
                422,
                "Invalid",
                f'{KIND}.{GROUP} "{name}" is invalid: {detail}',
                [{"reason": "FieldValueInvalid", "field": path, "message": message} for path, message in causes],
            )
        predictor = obj.get("spec", {}).get("predictor", {})
        webhook: list[str] = []
        percent = predictor.get("canaryTrafficPercent")
        # inference_service_validation.go: validateInferenceServiceComponent / validateCanaryTrafficPercent.
        if percent is not None and not 0 <= percent <= 100:
            webhook.append(f"the InferenceService canaryTrafficPercent {percent} is not between 0 and 100")
        # component.go validateLogger: the mode is required (nothing defaults it); storage needs path, parameters, key.
        logger = predictor.get("logger")
        if logger is not None:
            if logger.get("mode") not in LOGGER_MODES:
                webhook.append("invalid logger type")
            storage = logger.get("storage")
            if storage is not None and not all(k in storage for k in ("path", "parameters", "key")):
                webhook.append("invalid logger storage configuration")
        # validateExactlyOneImplementation: a model or framework spec, or containers (a custom predictor).
        implementations = [key for key in PREDICTOR_IMPLEMENTATIONS if key in predictor]
        if len(implementations) + bool(predictor.get("containers")) != 1:
            webhook.append("exactly one predictor implementation is required (model, a framework, or containers)")
        # validateDeploymentMode: the annotation cannot change the mode recorded in the status.
        recorded = (old_status or {}).get("deploymentMode")
        annotation = (obj.get("metadata", {}).get("annotations") or {}).get(DEPLOYMENT_MODE)
        if recorded and annotation is not None and annotation != _parse_mode(recorded):
            webhook.append(
                f"update rejected: deploymentMode cannot be changed from '{_parse_mode(recorded)}' to '{annotation}'"
            )
        if webhook:
            raise Rejected(
                400,
                "BadRequest",
                'admission webhook "inferenceservice.kserve-webhook-server.validator" denied the request: '
                + "; ".join(webhook),
            )

    # -- Argo Workflows: the CRD's API, and what the controller does first ------------------------

    def add_workflow_template(self, template: dict[str, Any]) -> None:
        """A WorkflowTemplate in the cluster (as `kubectl apply` of argo/workflow-template.yaml leaves it)."""
        meta = template["metadata"]
        self._workflow_templates[(meta["namespace"], meta["name"])] = copy.deepcopy(template)

    def fail_workflow_creates(self, count: int) -> None:
        """The next `count` Workflow creates get 503 (the API server restarting)."""
        self._failing_workflow_creates = count

    def _workflow_route(self, method: str, namespace: str, name: str | None, body: Any) -> tuple[int, Any]:
        if name is None and method == "POST":
            return 201, self._create_workflow(namespace, body)
        if name is None and method == "GET":
            items = [copy.deepcopy(w) for (ns, _), w in sorted(self.workflows.items()) if ns == namespace]
            return 200, {"apiVersion": ARGO_API_VERSION, "kind": "WorkflowList", "metadata": {}, "items": items}
        if name is not None and method == "GET":
            if (namespace, name) not in self.workflows:
                raise Rejected(404, "NotFound", f'workflows.argoproj.io "{name}" not found')
            return 200, copy.deepcopy(self.workflows[(namespace, name)])
        raise Rejected(405, "MethodNotAllowed", f"{method} on Workflows is not supported by the simulator")

    def _create_workflow(self, namespace: str, body: Any) -> dict[str, Any]:
        if self._failing_workflow_creates > 0:
            self._failing_workflow_creates -= 1
            raise Rejected(503, "ServiceUnavailable", "the server is currently unable to handle the request")
        if not isinstance(body, dict) or body.get("apiVersion") != ARGO_API_VERSION or body.get("kind") != "Workflow":
            raise Rejected(400, "BadRequest", f"expected apiVersion {ARGO_API_VERSION} kind Workflow")
        obj = {k: copy.deepcopy(v) for k, v in body.items() if k != "status"}
        metadata = obj.setdefault("metadata", {})
        name = metadata.get("name")
        if metadata.get("namespace") not in (None, namespace):
            raise Rejected(400, "BadRequest", "the namespace of the object does not match the request's")
        if not isinstance(name, str) or not DNS_1035.match(name):
            raise Rejected(422, "Invalid", f"Workflow.argoproj.io {name!r} is invalid: metadata.name")
        if (namespace, name) in self.workflows:
            raise Rejected(409, "AlreadyExists", f'workflows.argoproj.io "{name}" already exists')
        problems = self.validator.validate(obj)
        if problems:
            causes = [(p.path.removeprefix("$."), p.message) for p in problems]
            raise Rejected(
                422,
                "Invalid",
                f'Workflow.argoproj.io "{name}" is invalid: ' + "; ".join(f"{f}: {m}" for f, m in causes),
                [{"field": f, "message": m} for f, m in causes],
            )
        metadata.update(namespace=namespace, uid=str(uuid.UUID(int=next(self._uids))), creationTimestamp=_now())
        obj["status"] = self._workflow_status(namespace, obj)
        self.workflows[(namespace, name)] = obj
        return copy.deepcopy(obj)

    def _workflow_status(self, namespace: str, obj: dict[str, Any]) -> dict[str, Any]:
        """The controller's first look: its WorkflowTemplate must exist and declare every argument passed."""
        ref = obj["spec"].get("workflowTemplateRef", {}).get("name")
        template = self._workflow_templates.get((namespace, ref))
        if template is None:
            return {"phase": "Error", "message": f'workflowtemplates.argoproj.io "{ref}" not found'}
        declared = {p["name"] for p in template["spec"].get("arguments", {}).get("parameters", [])}
        passed = {p["name"] for p in obj["spec"].get("arguments", {}).get("parameters", [])}
        if passed - declared:
            return {"phase": "Error", "message": f"arguments not in {ref}: {sorted(passed - declared)}"}
        return {"phase": "Pending"}

    # -- the controller: KServe -----------------------------------------------------------------

    def _view(self, service: _Service, lag: bool = False) -> dict[str, Any]:
        """The object with its status; with `lag`, the status the controller had before the last write."""
        if not lag or time.monotonic() - service.changed_at >= self.reconcile_delay_s:
            self._reconcile(service)
        return {**copy.deepcopy(service.obj), "status": copy.deepcopy(service.status)}

    def _reconcile(self, service: _Service) -> None:
        """KServe and Knative reconcile each other's writes (watches on owned objects) until nothing changes."""
        for _ in range(10):
            before = copy.deepcopy((service.status, service.ksvc.status if service.ksvc else None))
            self._kserve_reconcile(service)
            if service.ksvc is not None:
                self._knative_reconcile(service, service.ksvc)
            if copy.deepcopy((service.status, service.ksvc.status if service.ksvc else None)) == before:
                return

    def _kserve_reconcile(self, service: _Service) -> None:
        """controller.go Reconcile for one InferenceService with a predictor only."""
        obj, status = service.obj, service.status
        annotations = obj["metadata"].get("annotations") or {}
        # utils.go GetDeploymentMode: the status's mode first, then the annotation, then the ConfigMap's.
        mode = _parse_mode(status.get("deploymentMode") or annotations.get(DEPLOYMENT_MODE) or self.default_mode)
        if mode == "Standard":
            self._reconcile_standard(service)
        else:
            self._reconcile_knative_predictor(service)
            # controller.go: RoutesReady and LatestDeploymentReady across components (PropagateCrossComponentStatus).
            for aggregate, per_component in (
                ("RoutesReady", "PredictorRouteReady"),
                ("LatestDeploymentReady", "PredictorConfigurationReady"),
            ):
                state = _condition(status, per_component)
                value = (state or {}).get("status", "Unknown")
                reason = "" if value == "True" else f"{per_component} not ready"
                _set_condition(status, aggregate, value, reason, "")
            self._reconcile_ingress(service)
        _set_condition(status, "Ready", *_living_ready(status))  # the condition set: PredictorReady, IngressReady
        status["deploymentMode"] = mode  # controller.go updateStatus

    def _reconcile_knative_predictor(self, service: _Service) -> None:
        """predictor.go reconcileKnativeDeployment: build, create or update the Knative Service, propagate."""
        component = service.status.setdefault("components", {}).setdefault("predictor", {})
        desired = self._create_knative_service(service, component)
        ksvc = service.ksvc
        if ksvc is None:
            # ksvc_reconciler.go Reconcile: NotFound -> Create, returning the desired object's (empty) status.
            service.ksvc = _KnativeService(
                name=desired["name"],
                generation=1,
                annotations=desired["annotations"],
                template=desired["template"],
                traffic=desired["traffic"],
            )
            kstatus: dict[str, Any] = {}
        else:
            # semanticEquals / reconcileKsvc: update the configuration, traffic and managed annotations on a
            # difference; the status returned is the existing object's, as Knative last wrote it.
            if (desired["template"], desired["traffic"], desired["annotations"]) != (
                ksvc.template,
                ksvc.traffic,
                ksvc.annotations,
            ):
                ksvc.template, ksvc.traffic, ksvc.annotations = (
                    desired["template"],
                    desired["traffic"],
                    desired["annotations"],
                )
                ksvc.generation += 1
            kstatus = copy.deepcopy(ksvc.status)
        self._propagate_status(service.status, component, kstatus)

    def _create_knative_service(self, service: _Service, component: dict[str, Any]) -> dict[str, Any]:
        """ksvc_reconciler.go createKnativeService (with predictor.go buildPredictorResources' metadata)."""
        obj = service.obj
        predictor = obj["spec"]["predictor"]
        isvc_annotations = obj["metadata"].get("annotations") or {}
        # buildPredictorResources: the InferenceService's annotations minus ServiceAnnotationDisallowedList,
        # plus the storage initializer's source URI when the implementation has a storage URI.
        annotations = {k: v for k, v in isvc_annotations.items() if k not in ANNOTATION_DISALLOWED}
        storage_uri = _storage_uri(predictor)
        if storage_uri:
            annotations[STORAGE_INITIALIZER_SOURCE_URI] = storage_uri
        # components/component.go addLoggerAnnotations: the agent sidecar is injected by these.
        logger = predictor.get("logger")
        if logger is not None:
            annotations[LOGGER] = "true"
            if logger.get("url") is not None:
                annotations[LOGGER_SINK_URL] = logger["url"]
            annotations[LOGGER_MODE] = logger.get("mode", "")
        # createKnativeService: managed annotations go on the Knative Service, the rest on the revision template.
        ksvc_annotations = {k: annotations.pop(k) for k in list(annotations) if k in MANAGED_KSVC_ANNOTATIONS}
        percent = predictor.get("canaryTrafficPercent")
        last_rolled_out = component.get("latestRolledoutRevision", "")
        tagged = annotations.get(TAG_ROUTING) == "true"
        traffic: list[dict[str, Any]]
        if percent is not None and last_rolled_out:
            # "Split traffic when canary traffic percent is specified"
            traffic = [{"latestRevision": True, "percent": percent, **({"tag": "latest"} if tagged else {})}]
            if percent < 100:
                traffic.append(
                    {"revisionName": last_rolled_out, "latestRevision": False, "percent": 100 - percent, "tag": "prev"}
                )
        else:
            # "blue-green rollout"
            traffic = [{"latestRevision": True, "percent": 100, **({"tag": "latest"} if tagged else {})}]
        labels = {
            **(obj["metadata"].get("labels") or {}),
            "serving.kserve.io/inferenceservice": service.name,
            "component": "predictor",
        }
        template = {"labels": labels, "annotations": annotations, "podSpec": _pod_spec(service.name, predictor)}
        return {
            "name": f"{service.name}-predictor",
            "annotations": ksvc_annotations,
            "template": copy.deepcopy(template),
            "traffic": traffic,
        }

    def _propagate_status(self, status: dict[str, Any], component: dict[str, Any], kstatus: dict[str, Any]) -> None:
        """inference_service_status.go PropagateStatus, for the predictor component."""
        component["latestCreatedRevision"] = kstatus.get("latestCreatedRevisionName", "")
        latest_ready = kstatus.get("latestReadyRevisionName", "")
        traffic = kstatus.get("traffic") or []
        revision_traffic: dict[str, int] = {}
        for target in traffic:
            if target.get("percent") is not None:
                revision_traffic[target["revisionName"]] = (
                    revision_traffic.get(target["revisionName"], 0) + target["percent"]
                )
        for target in traffic:
            if target["revisionName"] == latest_ready and target.get("latestRevision"):
                if component.get("latestRolledoutRevision", "") != latest_ready:
                    if target.get("percent") == 100:
                        # "track the last revision that's fully rolled out"
                        component["previousRolledoutRevision"] = component.get("latestRolledoutRevision", "")
                        component["latestRolledoutRevision"] = latest_ready
                elif latest_ready == kstatus.get("latestCreatedRevisionName"):
                    # "the latest ready revision is rolled out with 100% and then rolled back"
                    if target.get("percent") is not None and target["percent"] < 100:
                        # "check the possibility that the traffic is split over the same revision"
                        if revision_traffic.get(target["revisionName"]) == 100 and component.get(
                            "previousRolledoutRevision"
                        ):
                            component["latestRolledoutRevision"] = component["previousRolledoutRevision"]
        component["latestReadyRevision"] = latest_ready
        ready = _condition(kstatus, "Ready")
        if ready is not None and ready.get("status") == "True":
            for key in ("url", "address"):
                if kstatus.get(key):
                    component[key] = copy.deepcopy(kstatus[key])
        for kind, own in (("Ready", "PredictorReady"), ("RoutesReady", "PredictorRouteReady")):
            condition = _condition(kstatus, kind)
            if condition is not None:  # SetCondition(nil) does nothing
                _set_condition(
                    status, own, condition["status"], condition.get("reason", ""), condition.get("message", "")
                )
        component["traffic"] = copy.deepcopy(traffic)
        configuration = _condition(kstatus, "ConfigurationsReady")
        if configuration is not None:
            _set_condition(
                status,
                "PredictorConfigurationReady",
                configuration["status"],
                configuration.get("reason", ""),
                configuration.get("message", ""),
            )
        for key in [k for k, v in component.items() if v in ("", None, [])]:
            del component[key]  # omitempty
        if kstatus.get("observedGeneration"):
            status["observedGeneration"] = kstatus["observedGeneration"]  # the Knative Service's generation
        else:
            status.pop("observedGeneration", None)

    def _reconcile_ingress(self, service: _Service) -> None:
        """ingress_reconciler.go Reconcile with disableIstioVirtualHost (Kourier): the predictor's URL as is."""
        component = service.status.get("components", {}).get("predictor", {})
        url = component.get("url")
        if not url:
            return  # "service host and serviceurl are empty, skipping updating the inference service"
        service.status["url"] = url
        service.status["address"] = {"url": f"http://{service.name}-predictor.{service.namespace}.svc.cluster.local"}
        _set_condition(service.status, "IngressReady", "True", "", "")

    def _reconcile_standard(self, service: _Service) -> None:
        """Standard (raw) mode, reduced: the newest spec runs as a Deployment; canaryTrafficPercent does nothing."""
        ksvc_less = service.status.setdefault("components", {}).setdefault("predictor", {})
        backend = self._backend_for(service.namespace, 1, service.obj["spec"]["predictor"])
        ready = backend is not None and backend.ready
        _set_condition(
            service.status,
            "PredictorReady",
            *(
                ("True", "", "")
                if ready
                else ("False", "MinimumReplicasUnavailable", "Deployment does not have minimum availability.")
            ),
        )
        _set_condition(service.status, "IngressReady", "True", "", "")
        ksvc_less["url"] = f"http://{service.name}-predictor-{service.namespace}.{self.domain}"
        service.status["url"] = f"http://{service.name}-{service.namespace}.{self.domain}"

    # -- the controller: Knative ----------------------------------------------------------------

    def _knative_reconcile(self, service: _Service, ksvc: _KnativeService) -> None:
        """Knative's Service -> Configuration (a revision per template) and Route (traffic) -> Service status."""
        latest = ksvc.revisions[-1] if ksvc.revisions else None
        if latest is None or latest.template != ksvc.template:
            latest = self._new_revision(service, ksvc)
        # The configuration's latest ready revision only moves forward to a newer ready revision.
        latest_ready = next((r for r in reversed(ksvc.revisions) if r.ready), None)
        previous = ksvc.status
        entries: list[dict[str, Any]] = []
        resolved: list[dict[str, Any]] | None = entries
        for target in ksvc.traffic:
            name = latest_ready.name if target["latestRevision"] and latest_ready else target.get("revisionName")
            revision = ksvc.revision(name) if name else None
            if revision is None or not revision.ready:
                resolved = None  # the route cannot be programmed: it keeps its previous traffic
                break
            entry = {
                "revisionName": revision.name,
                "latestRevision": target["latestRevision"],
                "percent": target["percent"],
            }
            if target.get("tag"):
                entry["tag"] = target["tag"]
                entry["url"] = self._tag_url(service, ksvc, target["tag"], revision)
            entries.append(entry)
        traffic = resolved if resolved is not None else previous.get("traffic", [])
        routes = (
            ("True", "", "")
            if resolved is not None
            else ("Unknown", "RevisionMissing", "a revision the route targets is not ready")
        )
        if latest.ready:
            configuration = ("True", "", "")
        elif latest.failure:
            configuration = (
                "False",
                "RevisionFailed",
                f'Revision "{latest.name}" failed with message: {latest.failure}.',
            )
        else:
            configuration = (
                "Unknown",
                "RevisionMissing",
                f'Configuration "{ksvc.name}" is waiting for a Revision to become ready.',
            )
        ready = configuration if configuration[0] != "True" else routes
        status: dict[str, Any] = {
            "observedGeneration": ksvc.generation,
            "latestCreatedRevisionName": latest.name,
            "latestReadyRevisionName": latest_ready.name if latest_ready else "",
            "traffic": traffic,
            "url": f"http://{ksvc.name}.{service.namespace}.{self.domain}",
            "address": {"url": f"http://{ksvc.name}.{service.namespace}.svc.cluster.local"},
            "conditions": previous.get("conditions", []),
        }
        for kind, value in (("ConfigurationsReady", configuration), ("RoutesReady", routes), ("Ready", ready)):
            _set_condition(status, kind, *value)
        ksvc.status = status

    def _new_revision(self, service: _Service, ksvc: _KnativeService) -> Revision:
        number = len(ksvc.revisions) + 1
        predictor = service.obj["spec"]["predictor"]
        storage_uri = _storage_uri(predictor) or ""
        fault = self._faults.get((service.namespace, number)) or self._faults.get((service.namespace, storage_uri))
        backend = self._backend_for(service.namespace, number, predictor) if fault != "never_ready" else None
        revision = Revision(
            name=f"{ksvc.name}-{number:05d}",
            number=number,
            template=copy.deepcopy(ksvc.template),
            storage_uri=storage_uri,
            runtime="custom" if predictor.get("containers") else "tensorflow",
            fault=fault,
            backend=backend,
        )
        revision.start_proxy()
        ksvc.revisions.append(revision)
        return revision

    def _tag_url(self, service: _Service, ksvc: _KnativeService, tag: str, revision: Revision) -> str:
        if service.namespace in self._direct and revision.proxy is not None:
            return revision.proxy_url
        return f"http://{tag}-{ksvc.name}.{service.namespace}.{self.domain}"

    # -- model servers ----------------------------------------------------------------------------

    def _backend_for(self, namespace: str, number: int, predictor: dict[str, Any]) -> Backend | None:
        """The model server of a predictor spec: TF Serving's stand-in, or the custom container's command."""
        if predictor.get("containers"):
            container = predictor["containers"][0]
            key = json.dumps(container, sort_keys=True)
            if not self._live(key):
                self._start(key, *self._custom(namespace, number, container))
        elif _storage_uri(predictor):
            key = self._tf_serving_key(_storage_uri(predictor) or "")
            if not self._live(key):
                self._start(key, *self._tf_serving(_storage_uri(predictor) or ""))
        else:
            return None
        return self._backends[key]

    def _live(self, key: str) -> bool:
        return key in self._backends and not self._backends[key].failed

    def _start(self, key: str, argv: list[str], ready_path: str) -> None:
        port = int(argv[argv.index("--port") + 1])
        log_path = self.workdir / f"model-server-{len(self._backends) + 1}.log"
        self._backends[key] = Backend(argv, port, ready_path, log_path)

    @staticmethod
    def _tf_serving_key(storage_uri: str) -> str:
        return f"tensorflow {storage_uri}"

    def _tf_serving(self, storage_uri: str) -> tuple[list[str], str]:
        cli = Path(sys.executable).parent / "fashion-pipeline"
        argv = [str(cli), "serve", "--storage-uri", storage_uri, "--port", str(free_port())]
        return argv, protocol.ready_path(MODEL_NAME)

    def _custom(self, namespace: str, number: int, container: dict[str, Any]) -> tuple[list[str], str]:
        """The container as its pod runs it: a storage initializer fills /mnt/models and rewrites STORAGE_URI
        (storage_initializer_injector.go), `$(VAR)` is expanded from the env, the port is a free local one."""
        env = {e["name"]: e.get("value", "") for e in container.get("env") or []}
        mount = Path(MODEL_MOUNT)
        if env.get(STORAGE_URI_ENV):
            mount = self.workdir / f"{namespace}-{number}" / "mnt-models"
            if mount.exists():
                shutil.rmtree(mount)
            open_store(env[STORAGE_URI_ENV]).download_dir("", mount)
            env[STORAGE_URI_ENV] = str(mount)
        argv = [
            ENV_REFERENCE.sub(lambda m: env.get(m.group(1), m.group(0)), arg) for arg in container.get("args") or []
        ]
        command = [str(Path(sys.executable).parent / c) if c == "fashion-pipeline" else c for c in container["command"]]
        port = str(free_port())
        for flag, value in (("--port", port), ("--host", "127.0.0.1")):  # the pod's own network namespace
            if flag in argv:
                argv[argv.index(flag) + 1] = value
        probe = ((container.get("readinessProbe") or {}).get("httpGet") or {}).get("path", "/")
        return [*command, *argv], probe

    # -- the ingress ----------------------------------------------------------------------------

    def _ingress_handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        sim = self

        class Ingress(_Quiet):
            def _handle(self) -> None:
                host = (self.headers.get("Host") or "").split(":")[0]
                revision = sim._route_host(host)
                if revision is None:
                    _send(self, 404, {"error": f"no route for host {host!r}"})
                    return
                _forward(self, int(urlsplit(revision.proxy_url).port or 0))

            do_GET = do_POST = _handle

        return Ingress

    def _route_host(self, host: str) -> Revision | None:
        """Kourier: the Knative Service's host splits by the route's traffic, `<tag>-<host>` is one revision."""
        with self._lock:
            for service in self._services.values():
                view = self._view(service, lag=True)
                if service.ksvc is None or view["status"].get("deploymentMode") != "Knative":
                    continue
                base = f"{service.ksvc.name}.{service.namespace}.{self.domain}"
                traffic = view["status"].get("components", {}).get("predictor", {}).get("traffic") or []
                if host == base:
                    return self._split(service, traffic)
                for entry in traffic:
                    if entry.get("tag") and host == f"{entry['tag']}-{base}":
                        return service.revision(entry["revisionName"])
        return None

    def _split(self, service: _Service, traffic: list[dict[str, Any]]) -> Revision | None:
        """Smooth weighted round-robin over the revisions with a share: exactly their percent of requests."""
        shares: dict[str, int] = {}
        for entry in traffic:
            if entry.get("percent"):
                shares[entry["revisionName"]] = shares.get(entry["revisionName"], 0) + int(entry["percent"])
        if not shares:
            return None
        for name, percent in shares.items():
            service.credit[name] = service.credit.get(name, 0) + percent
        chosen = max(shares, key=lambda name: service.credit[name])
        service.credit[chosen] -= sum(shares.values())
        return service.revision(chosen)


def _parse_mode(mode: str) -> str:
    """constants.go ParseDeploymentMode: the legacy names normalised."""
    return {"Serverless": "Knative", "RawDeployment": "Standard"}.get(mode, mode)


def _storage_uri(predictor: dict[str, Any]) -> str | None:
    """The implementation's GetStorageUri: `model.storageUri`, or a custom container's STORAGE_URI env."""
    if predictor.get("model"):
        return predictor["model"].get("storageUri")
    for container in predictor.get("containers") or []:
        if container.get("name") == CUSTOM_CONTAINER:  # predictor_custom.go GetStorageUri
            return next((e.get("value") for e in container.get("env") or [] if e.get("name") == STORAGE_URI_ENV), None)
    return None


def _pod_spec(name: str, predictor: dict[str, Any]) -> dict[str, Any]:
    """predictor.go buildPodSpec, reduced to what makes revisions differ: the runtime container(s)."""
    extension = {k: v for k, v in predictor.items() if k not in ("canaryTrafficPercent", "model", "containers")}
    if predictor.get("model"):
        model = predictor["model"]
        containers = [
            {
                "name": CUSTOM_CONTAINER,
                "image": f"tensorflow/serving:{model.get('runtimeVersion', '2.6.2')}",
                "args": [f"--model_name={name}", f"--model_base_path={MODEL_MOUNT}"],
                "resources": model.get("resources", {}),
            }
        ]
    else:
        containers = copy.deepcopy(predictor.get("containers") or [])
    for container in containers:  # AddEnvVarToPodSpec INFERENCE_SERVICE_NAME
        container.setdefault("env", []).append({"name": "INFERENCE_SERVICE_NAME", "value": name})
    return {**copy.deepcopy(extension), "containers": containers}


def _condition(holder: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in holder.get("conditions") or [] if c.get("type") == kind), None)


def _set_condition(holder: dict[str, Any], kind: str, status: str, reason: str, message: str) -> None:
    """knative.dev/pkg's condition manager: the transition time changes only with the status."""
    conditions = holder.setdefault("conditions", [])
    old = _condition(holder, kind)
    since = old["lastTransitionTime"] if old and old["status"] == status else _now()
    condition = {"type": kind, "status": status, "lastTransitionTime": since}
    if reason:
        condition["reason"] = reason
    if message:
        condition["message"] = message
    holder["conditions"] = sorted([c for c in conditions if c["type"] != kind] + [condition], key=lambda c: c["type"])


def _living_ready(status: dict[str, Any]) -> tuple[str, str, str]:
    """apis.NewLivingConditionSet(PredictorReady, IngressReady): Ready follows the first unhappy dependent."""
    unknown: tuple[str, str, str] | None = None
    for kind in ("PredictorReady", "IngressReady"):
        condition = _condition(status, kind)
        if condition is None:
            unknown = unknown or ("Unknown", "", "")
        elif condition["status"] == "False":
            return "False", condition.get("reason", ""), condition.get("message", "")
        elif condition["status"] != "True":
            unknown = unknown or ("Unknown", condition.get("reason", ""), condition.get("message", ""))
    return unknown or ("True", "", "")


def _status_body(exc: Rejected) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": exc.message,
        "reason": exc.reason,
        "code": exc.code,
    }
    if exc.causes:
        body["details"] = {"group": GROUP, "kind": KIND, "causes": exc.causes}
    return body
