"""A simulated KServe control plane for tests, spoken to by the real `kubernetes` client.

- **API server** (127.0.0.1): the Kubernetes REST paths of `serving.kserve.io/v1beta1`
  InferenceServices (GET/POST/PATCH/DELETE, list), `/version` and discovery. Every InferenceService
  written is validated strictly against the KServe CRD in ../shared/schemas (`workflows.validate`),
  plus what KServe's admission webhook checks (`canaryTrafficPercent` in 0..100, one predictor
  implementation) and Kubernetes' metadata rules: a violation is a 422 with a `Status` body. PATCH
  takes JSON merge patches only (RFC 7386); `status` is a subresource, so writes never set it.
- **Controller**: `metadata.generation` bumps on spec changes; KServe copies the InferenceService's
  annotations and labels into the Knative revision template, so a change there or in the predictor
  creates a revision `<name>-predictor-0000N`. Traffic follows KServe's Knative reconciler
  (`createKnativeService` + `PropagateStatus`): `canaryTrafficPercent` N splits between the latest
  ready revision and the last rolled-out one, unset gives the latest 100%, and its rollback rule
  (0% while the latest ready revision is the rolled-out one means "back to the one before") is kept.
  `latestRevision: true` resolves to the latest *ready* revision, as in Knative. Status: conditions
  (Ready, PredictorReady, IngressReady), `observedGeneration` (as soon as the controller has seen a
  generation, like Knative's, not when it is ready), URLs, per-revision `traffic` with `tag: latest`
  / `prev` under `serving.kserve.io/enable-tag-routing`. The controller lags writes by
  `reconcile_delay_s`, so a read right after a write shows the old status, as on a cluster.
  Deployment mode: the annotation (Serverless/Knative, RawDeployment/Standard), else `default_mode`
  (Standard, KServe's default since 0.16); fixed at creation. Standard mode ignores the canary.
- **Data plane**: each revision gets a queue-proxy (a tiny HTTP proxy where faults are injected)
  in front of a REAL `fashion-pipeline serve --storage-uri` process. Model servers are shared
  between revisions with the same storageUri (one process per model, to keep tests fast). An
  ingress on 127.0.0.1 routes by Host header like Istio: `<name>.<ns>.<domain>` and
  `<name>-predictor...` split by the traffic status, `latest-<name>-predictor...` and `prev-...` go
  to the tagged revision. With `direct_urls(namespace)`, tag URLs are the queue-proxies' own
  addresses (reachable without a Host header).

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

from workflows.validate import Validator

REPO = Path(__file__).resolve().parent.parent
SCHEMAS = REPO.parent / "shared" / "schemas"
GROUP, VERSION, PLURAL, KIND = "serving.kserve.io", "v1beta1", "inferenceservices", "InferenceService"
API_VERSION = f"{GROUP}/{VERSION}"
MODEL_SERVER_MODEL = "fashion-mnist"  # the name `fashion-pipeline serve` serves
FAULTS = ("never_ready", "errors", "wrong_classes")
TAG_ROUTING = "serving.kserve.io/enable-tag-routing"
DEPLOYMENT_MODE = "serving.kserve.io/deploymentMode"
MODES = {"Knative": "Knative", "Serverless": "Knative", "Standard": "Standard", "RawDeployment": "Standard"}
# KServe keeps these out of the revision template (constants.ServiceAnnotationDisallowedList).
TEMPLATE_ANNOTATION_DENYLIST = frozenset(
    {
        "autoscaling.knative.dev/min-scale",
        "autoscaling.knative.dev/max-scale",
        "internal.serving.kserve.io/storage-initializer-sourceuri",
        "kubectl.kubernetes.io/last-applied-configuration",
    }
)
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
    """A real model server process serving one storageUri."""

    def __init__(self, storage_uri: str, log_path: Path) -> None:
        self.storage_uri = storage_uri
        self.port = free_port()
        self.log_path = log_path
        self.ready = False
        self.failed: str | None = None
        cli = Path(sys.executable).parent / "fashion-pipeline"
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [str(cli), "serve", "--storage-uri", storage_uri, "--port", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        while self.proc.poll() is None:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                conn.request("GET", f"/v2/models/{MODEL_SERVER_MODEL}/ready")
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


def _forward(handler: http.server.BaseHTTPRequestHandler, port: int, rewrite: Any = None) -> None:
    """Pass the request on to 127.0.0.1:port and its answer back (optionally rewriting a JSON body)."""
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
        return
    if rewrite is not None and response.status == 200:
        data = rewrite(data)
    handler.send_response(response.status)
    for key, value in response.getheaders():
        if key.lower() not in ("content-length", "connection", "transfer-encoding", "date", "server"):
            handler.send_header(key, value)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def _send(handler: http.server.BaseHTTPRequestHandler, code: int, body: Any) -> None:
    data = json.dumps(body).encode()
    handler.send_response(code)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def _shift_classes(data: bytes) -> bytes:
    """The wrong-classes fault: every prediction names the next class (probabilities rotated to match)."""
    answer = json.loads(data)
    for prediction in answer.get("predictions", []):
        prediction["class_id"] = (int(prediction["class_id"]) + 1) % 10
        probabilities = prediction.get("probabilities")
        if isinstance(probabilities, list) and probabilities:
            prediction["probabilities"] = probabilities[-1:] + probabilities[:-1]
    return json.dumps(answer).encode()


class _Quiet(http.server.BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class Revision:
    name: str
    number: int
    storage_uri: str
    template: dict[str, Any]
    fault: str | None
    backend: Backend | None
    proxy: http.server.ThreadingHTTPServer | None = None

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
                    rewrite = _shift_classes if revision.fault == "wrong_classes" else None
                    _forward(self, revision.backend.port, rewrite)

            do_GET = do_POST = _handle

        self.proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), QueueProxy)
        threading.Thread(target=self.proxy.serve_forever, daemon=True).start()

    def stop_proxy(self) -> None:
        if self.proxy is not None:
            self.proxy.shutdown()
            self.proxy.server_close()


# -- the control plane --------------------------------------------------------------------------


@dataclass
class _Component:
    """KServe's status.components.predictor bookkeeping."""

    latest_created: str = ""
    latest_ready: str = ""
    latest_rolled_out: str = ""
    previous_rolled_out: str = ""


@dataclass
class _Service:
    obj: dict[str, Any]  # as stored: no status
    mode: str
    revisions: list[Revision] = field(default_factory=list)
    component: _Component = field(default_factory=_Component)
    status: dict[str, Any] = field(default_factory=dict)
    changed_at: float = 0.0
    credit: dict[str, int] = field(default_factory=dict)  # smooth weighted round-robin at the ingress

    @property
    def name(self) -> str:
        return str(self.obj["metadata"]["name"])

    @property
    def namespace(self) -> str:
        return str(self.obj["metadata"]["namespace"])

    def revision(self, name: str) -> Revision | None:
        return next((r for r in self.revisions if r.name == name), None)


class Rejected(Exception):
    def __init__(self, code: int, reason: str, message: str, causes: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.causes = code, reason, message, causes or []


class KServeSim:
    """The API server, controller and data plane; `with KServeSim(workdir) as sim:` stops everything after."""

    def __init__(
        self,
        workdir: Path,
        schemas_dir: Path = SCHEMAS,
        reconcile_delay_s: float = 0.2,
        default_mode: str = "Standard",
        domain: str = "example.com",
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.validator = Validator(schemas_dir)
        self.reconcile_delay_s = reconcile_delay_s
        self.default_mode = default_mode
        self.domain = domain
        self.requests: list[dict[str, Any]] = []
        self._services: dict[tuple[str, str], _Service] = {}
        self._backends: dict[str, Backend] = {}
        self._faults: dict[tuple[str, str | int], str] = {}
        self._direct: set[str] = set()
        self._lock = threading.RLock()
        self._uids = itertools.count(1)
        self._resource_versions = itertools.count(1)
        self.api = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._api_handler())
        self.ingress = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._ingress_handler())
        for server in (self.api, self.ingress):
            threading.Thread(target=server.serve_forever, daemon=True).start()

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
        """Start the model server of a storageUri ahead of its first revision (like a pre-pulled image)."""
        with self._lock:
            if storage_uri not in self._backends:
                self._backends[storage_uri] = Backend(
                    storage_uri, self.workdir / f"model-server-{len(self._backends) + 1}.log"
                )

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

    def traffic_by_storage_uri(self, namespace: str, name: str) -> dict[str, int]:
        """Where the traffic goes, by model: storageUri -> percent (revisions with a share only)."""
        isvc = self.get(namespace, name)
        shares: dict[str, int] = {}
        for entry in ((isvc or {}).get("status", {}).get("components", {}).get("predictor", {}).get("traffic")) or []:
            rev = self.revision(namespace, name, entry["revisionName"])
            if entry.get("percent") and rev is not None:
                shares[rev.storage_uri] = shares.get(rev.storage_uri, 0) + int(entry["percent"])
        return shares

    def host(self, namespace: str, name: str, tag: str | None = None) -> str:
        """The Host header the ingress routes: the InferenceService, or one tagged revision."""
        return f"{tag}-{name}-predictor.{namespace}.{self.domain}" if tag else f"{name}.{namespace}.{self.domain}"

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
        group = {"name": GROUP, "versions": [{"groupVersion": API_VERSION, "version": VERSION}]}
        group["preferredVersion"] = group["versions"][0]  # type: ignore[index]
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
        self._admit(obj)
        annotations = metadata.get("annotations") or {}
        mode = MODES.get(annotations.get(DEPLOYMENT_MODE, ""), self.default_mode)
        service = _Service(obj=obj, mode=mode, changed_at=time.monotonic())
        self._services[(namespace, obj["metadata"]["name"])] = service
        self._new_revision(service)
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
        self._admit(merged)
        if merged == current:
            return self._view(service, lag=True)
        if merged.get("spec") != current.get("spec"):
            merged["metadata"]["generation"] = current["metadata"]["generation"] + 1
        merged["metadata"]["resourceVersion"] = str(next(self._resource_versions))
        service.obj = merged
        service.changed_at = time.monotonic()
        if _template(merged) != service.revisions[-1].template:
            self._new_revision(service)
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

    def _admit(self, obj: dict[str, Any]) -> None:
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
        if percent is not None and not 0 <= percent <= 100:
            webhook.append(f"the InferenceService canaryTrafficPercent {percent} is not between 0 and 100")
        implementations = [key for key in PREDICTOR_IMPLEMENTATIONS if key in predictor]
        if len(implementations) + bool(predictor.get("containers")) != 1:
            webhook.append("exactly one predictor implementation is required (model, a framework, or containers)")
        if webhook:
            raise Rejected(
                400,
                "BadRequest",
                'admission webhook "inferenceservice.kserve-webhook-server.validator" denied the request: '
                + "; ".join(webhook),
            )

    # -- the controller -------------------------------------------------------------------------

    def _new_revision(self, service: _Service) -> None:
        number = len(service.revisions) + 1
        model = service.obj["spec"]["predictor"].get("model") or {}
        storage_uri = str(model.get("storageUri", ""))
        fault = self._faults.get((service.namespace, number)) or self._faults.get((service.namespace, storage_uri))
        backend = None
        if fault != "never_ready" and storage_uri:
            backend = self._backends.get(storage_uri)
            if backend is None or backend.failed:
                self._backends.pop(storage_uri, None)
                self.start_model_server(storage_uri)
                backend = self._backends[storage_uri]
        revision = Revision(
            name=f"{service.name}-predictor-{number:05d}",
            number=number,
            storage_uri=storage_uri,
            template=_template(service.obj),
            fault=fault,
            backend=backend,
        )
        revision.start_proxy()
        service.revisions.append(revision)

    def _view(self, service: _Service, lag: bool = False) -> dict[str, Any]:
        """The object with its status; with `lag`, the status the controller had before the last write."""
        if not lag or time.monotonic() - service.changed_at >= self.reconcile_delay_s:
            self._reconcile(service)
        return {**copy.deepcopy(service.obj), "status": copy.deepcopy(service.status)}

    def _reconcile(self, service: _Service) -> None:
        if service.mode == "Standard":
            self._reconcile_standard(service)
            return
        for _ in range(5):  # KServe and Knative reconcile each other's updates until nothing changes
            before = copy.deepcopy(service.component)
            traffic = self._knative_traffic(service)
            self._propagate(service, traffic)
            if service.component == before:
                break
        self._write_status(service, traffic)

    def _knative_traffic(self, service: _Service) -> list[dict[str, Any]]:
        """KServe's createKnativeService traffic targets, resolved by Knative into the route's status."""
        predictor = service.obj["spec"]["predictor"]
        percent = predictor.get("canaryTrafficPercent")
        tagged = (service.obj["metadata"].get("annotations") or {}).get(TAG_ROUTING) == "true"
        component = service.component
        last_rolled_out = component.latest_rolled_out
        if component.latest_rolled_out == component.latest_ready and percent is not None and percent < 100:
            last_rolled_out = component.previous_rolled_out
        targets: list[dict[str, Any]]
        if percent is not None and last_rolled_out:
            targets = [{"latestRevision": True, "percent": percent, **({"tag": "latest"} if tagged else {})}]
            if percent < 100:
                targets.append(
                    {"latestRevision": False, "percent": 100 - percent, "revisionName": last_rolled_out, "tag": "prev"}
                )
        else:
            targets = [{"latestRevision": True, "percent": 100, **({"tag": "latest"} if tagged else {})}]
        latest_ready = next((r.name for r in reversed(service.revisions) if r.ready), "")
        if not latest_ready:
            return []  # the route has nothing to send traffic to yet
        for target in targets:
            if target["latestRevision"]:
                target["revisionName"] = latest_ready
            if "tag" in target:
                target["url"] = self._tag_url(service, target["tag"], target["revisionName"])
        return targets

    def _propagate(self, service: _Service, traffic: list[dict[str, Any]]) -> None:
        """KServe's PropagateStatus: which revision counts as rolled out."""
        component = service.component
        latest_created = service.revisions[-1].name
        latest_ready = next((r.name for r in reversed(service.revisions) if r.ready), "")
        component.latest_created = latest_created
        by_revision: dict[str, int] = {}
        for target in traffic:
            by_revision[target["revisionName"]] = by_revision.get(target["revisionName"], 0) + target["percent"]
        for target in traffic:
            if target["revisionName"] != latest_ready or not target["latestRevision"]:
                continue
            if component.latest_rolled_out != latest_ready:
                if target["percent"] == 100:
                    component.previous_rolled_out = component.latest_rolled_out
                    component.latest_rolled_out = latest_ready
            elif latest_ready == latest_created and target["percent"] < 100:
                if by_revision.get(target["revisionName"]) == 100 and component.previous_rolled_out:
                    component.latest_rolled_out = component.previous_rolled_out
        component.latest_ready = latest_ready

    def _write_status(self, service: _Service, traffic: list[dict[str, Any]]) -> None:
        latest = service.revisions[-1]
        if latest.ready:
            predictor = ("True", "", "")
        elif latest.failure:
            predictor = ("False", "RevisionFailed", f'Revision "{latest.name}" failed with message: {latest.failure}.')
        else:
            predictor = (
                "Unknown",
                "RevisionMissing",
                f'Configuration "{service.name}-predictor" is waiting for a Revision to become ready.',
            )
        ingress = ("True", "", "") if traffic else ("Unknown", "RouteNotReady", "no revision is ready to route to")
        ready = predictor if predictor[0] != "True" else ingress
        component = service.component
        host = f"{service.name}-predictor.{service.namespace}.{self.domain}"
        service.status = {
            "observedGeneration": service.obj["metadata"]["generation"],
            "deploymentMode": "Knative",
            "url": f"http://{service.name}.{service.namespace}.{self.domain}",
            "address": {"url": f"http://{service.name}.{service.namespace}.svc.cluster.local"},
            "conditions": self._conditions(
                service, {"IngressReady": ingress, "PredictorReady": predictor, "Ready": ready}
            ),
            "components": {
                "predictor": {
                    k: v
                    for k, v in {
                        "latestCreatedRevision": component.latest_created,
                        "latestReadyRevision": component.latest_ready,
                        "latestRolledoutRevision": component.latest_rolled_out,
                        "previousRolledoutRevision": component.previous_rolled_out,
                        "traffic": traffic,
                        "url": f"http://{host}",
                        "address": {"url": f"http://{service.name}-predictor.{service.namespace}.svc.cluster.local"},
                    }.items()
                    if v
                }
            },
        }

    def _reconcile_standard(self, service: _Service) -> None:
        """Raw deployment: the newest spec rolls out as a Deployment; canaryTrafficPercent does nothing."""
        latest = service.revisions[-1]
        predictor = (
            ("True", "", "")
            if latest.ready
            else ("False", "MinimumReplicasUnavailable", "Deployment does not have minimum availability.")
        )
        service.status = {
            "observedGeneration": service.obj["metadata"]["generation"],
            "deploymentMode": "Standard",
            "url": f"http://{service.name}-{service.namespace}.{self.domain}",
            "conditions": self._conditions(
                service, {"IngressReady": ("True", "", ""), "PredictorReady": predictor, "Ready": predictor}
            ),
            "components": {"predictor": {"url": f"http://{service.name}-predictor-{service.namespace}.{self.domain}"}},
        }

    def _conditions(self, service: _Service, wanted: dict[str, tuple[str, str, str]]) -> list[dict[str, str]]:
        previous = {c["type"]: c for c in service.status.get("conditions", [])}
        conditions = []
        for kind, (status, reason, message) in sorted(wanted.items()):
            old = previous.get(kind)
            since = old["lastTransitionTime"] if old and old["status"] == status else _now()
            condition = {"type": kind, "status": status, "lastTransitionTime": since}
            if reason:
                condition["reason"] = reason
            if message:
                condition["message"] = message
            conditions.append(condition)
        return conditions

    def _tag_url(self, service: _Service, tag: str, revision_name: str) -> str:
        if service.namespace in self._direct:
            revision = service.revision(revision_name)
            if revision is not None and revision.proxy is not None:
                return revision.proxy_url
        return f"http://{tag}-{service.name}-predictor.{service.namespace}.{self.domain}"

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
        with self._lock:
            for service in self._services.values():
                if service.mode != "Knative":
                    continue
                base = f"{service.name}-predictor.{service.namespace}.{self.domain}"
                traffic = (
                    self._view(service, lag=True)["status"].get("components", {}).get("predictor", {}).get("traffic")
                    or []
                )
                if host in (f"{service.name}.{service.namespace}.{self.domain}", base):
                    return self._split(service, traffic)
                for entry in traffic:
                    if host == f"{entry.get('tag')}-{base}":
                        return service.revision(entry["revisionName"])
        return None

    def _split(self, service: _Service, traffic: list[dict[str, Any]]) -> Revision | None:
        """Smooth weighted round-robin over the revisions with a share: exactly their percent of requests."""
        shares = [(t["revisionName"], int(t["percent"])) for t in traffic if t.get("percent")]
        if not shares:
            return None
        for name, percent in shares:
            service.credit[name] = service.credit.get(name, 0) + percent
        chosen = max(shares, key=lambda share: service.credit[share[0]])[0]
        service.credit[chosen] -= sum(percent for _, percent in shares)
        return service.revision(chosen)


def _template(obj: dict[str, Any]) -> dict[str, Any]:
    """What KServe puts into the Knative revision template: a change here is a new revision."""
    metadata = obj.get("metadata", {})
    predictor = {k: v for k, v in obj.get("spec", {}).get("predictor", {}).items() if k != "canaryTrafficPercent"}
    annotations = {
        k: v for k, v in (metadata.get("annotations") or {}).items() if k not in TEMPLATE_ANNOTATION_DENYLIST
    }
    return copy.deepcopy({"predictor": predictor, "annotations": annotations, "labels": metadata.get("labels") or {}})


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
