"""The KServe target: one InferenceService, rolled forward with a Knative-mode canary.

What the InferenceService carries, and why:
- The predictor, in one of two serving runtimes:
  `tensorflow` (the default): `spec.predictor.model` with format `tensorflow`, a pinned TF Serving
  `runtimeVersion` (KServe's default 2.6.2 cannot load a TF 2.21 export) and `storageUri` = the registry's
  version root. TF Serving publishes amd64 images only.
  `custom`: `spec.predictor.containers`, the step image running `fashion-pipeline serve` (amd64 and arm64):
  the `STORAGE_URI` env is KServe's storage URI for custom predictors (v0.20 `predictor_custom.go`
  GetStorageUri); its storage initializer downloads the version root to /mnt/models and rewrites the
  variable to that path, which the container's args read as `$(STORAGE_URI)`.
- `serving.kserve.io/deploymentMode: Knative`: v0.20's release ConfigMap ships `Serverless` (Knative),
  but a cluster may default to Standard (raw) mode, the code default, where `canaryTrafficPercent` is
  silently ignored. An existing InferenceService in Standard mode is refused.
- `serving.kserve.io/enable-tag-routing: "true"`: the canary gets its own `latest-` URL, so the probe
  measures the candidate alone, never the production share of a split.
- Our bookkeeping annotations name the production version and its storageUri. KServe copies the
  InferenceService's annotations into the Knative revision template, so changing one creates a new
  revision: they are written only together with a new predictor, never on their own.

How KServe v0.20 routes (`reconcilers/knative/ksvc_reconciler.go` createKnativeService, PropagateStatus in
`inference_service_status.go`), and what follows for this target:
- With a canary percent and a rolled-out revision, N% goes to `latestRevision: true` (Knative's latest
  *ready* revision) and the rest to the rolled-out one. A first deployment created with a percent ends as
  `latest` X N% + `prev` X (100-N)%: a revision's share is summed over the traffic entries.
- A canary rolled back with 0% stays the latest ready revision: the next canary's share would reach it
  until the new revision is ready. So every rollback restores the production spec: first at 0% (all
  traffic stays on the rolled-out revision), then, once production's new revision is ready, without a
  percent, so the newest ready revision serves production again.
- `status.observedGeneration` is the Knative Service's generation, not the InferenceService's: readiness
  is read from revisions, conditions and traffic, never by comparing it with `metadata.generation`.

Writes are JSON merge patches through `CustomObjectsApi` with plain dicts (the typed `KServeClient` write
path breaks with kubernetes 37), with server-side strict field validation so a cluster rejects an unknown
field instead of silently dropping it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import numpy as np

from steps import STEP_IMAGE
from steps.errors import UserError
from steps.parameters import parameter, setting
from steps.registry import MODEL_NAME, Registry
from steps.serving.probe import ProbeResult, probe_over_http
from steps.serving.protocol import CODECS, Protocol, ready_path
from steps.targets.base import READY_TIMEOUT_S

log = logging.getLogger(__name__)
# Written once here: the namespace of everything on the cluster (workflows, InferenceService, webhook).
DEFAULT_NAMESPACE = "fashion"
# TF Serving (amd64 images only), or the step image's own server (arm64 too).
SERVING_RUNTIMES = ("tensorflow", "custom")
DEFAULT_SERVING_RUNTIME = "tensorflow"

GROUP, API_VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
# The `tensorflow/serving` image tag. There is no TF Serving 2.21 (tensorflow/serving#4130): 2.20.0 is
# the newest release, and tests/model/test_serving_runtime.py checks that a TF 2.21 export answers under it.
DEFAULT_RUNTIME_VERSION = "2.20.0"
DEFAULT_SERVICE_ACCOUNT = "fashion-mnist-predictor"
# `fashion-pipeline log-sink` as the Deployment and Service of argo/monitoring.yaml: KServe's logger sink.
LOG_SINK_SERVICE = "fashion-log-sink"
DEFAULT_RESOURCES: dict[str, dict[str, str]] = {
    "requests": {"cpu": "500m", "memory": "1Gi"},
    "limits": {"cpu": "1", "memory": "2Gi"},
}
MERGE_PATCH = "application/merge-patch+json"

# The custom predictor: KServe's container name and storage-URI variable (v0.20 constants.go), the port
# Knative sends requests to by default.
CUSTOM_CONTAINER = "kserve-container"
STORAGE_URI_ENV = "STORAGE_URI"
CUSTOM_PORT = 8080

DEPLOYMENT_MODE = "serving.kserve.io/deploymentMode"
TAG_ROUTING = "serving.kserve.io/enable-tag-routing"
PRODUCTION_VERSION = "fashion-pipeline.io/production-version"
PRODUCTION_STORAGE_URI = "fashion-pipeline.io/production-storage-uri"
CANARY_VERSION = "fashion-pipeline.io/canary-version"
STANDARD_MODES = frozenset({"Standard", "RawDeployment"})
OTHER_PREDICTORS = ("tensorflow", "sklearn", "xgboost", "pytorch", "triton", "onnx", "pmml", "lightgbm", "paddle")


class KServeError(UserError):
    """The cluster refused, or the InferenceService did not reach the state the rollout needs."""


@dataclass(frozen=True)
class KServeOptions:
    """What the kserve target is built with: a workflow argument (`parameter`) and the command's settings."""

    serving_runtime: str = parameter(
        DEFAULT_SERVING_RUNTIME,
        "Rollout on KServe: tensorflow (TF Serving, amd64 only) or custom (the step image's own server, arm64 too)",
        choices=SERVING_RUNTIMES,
    )
    namespace: str = setting(DEFAULT_NAMESPACE, "kserve target: the InferenceService's namespace.")
    probe_url: str | None = setting(
        None,
        "kserve target: probe through this base URL (e.g. a port-forward to the ingress) with a Host header.",
        envvar="FASHION_PIPELINE_PROBE_URL",
    )
    serving_image: str = setting(STEP_IMAGE, "kserve target, custom runtime: the image to run (the step image).")
    inference_log_url: str | None = setting(
        None, "kserve target: where KServe's logger posts (default: the namespace's log sink; '' for no logger)."
    )


def kserve_target(registry: Registry, options: KServeOptions, ready_timeout_s: float) -> KServeTarget:
    """The InferenceService the options name; a restored production may take `ready_timeout_s` to be ready."""
    return KServeTarget(
        namespace=options.namespace,
        probe_url=options.probe_url,
        serving_runtime=options.serving_runtime,
        serving_image=options.serving_image,
        restore_timeout_s=ready_timeout_s,
        inference_log_url=options.inference_log_url,
    )


class KServeTarget:
    """An InferenceService in `namespace`, driven through the Kubernetes API."""

    name = "kserve"
    follows_registry = False  # the InferenceService is the truth; the registry alias follows it

    def __init__(
        self,
        namespace: str,
        name: str = MODEL_NAME,
        runtime_version: str = DEFAULT_RUNTIME_VERSION,
        service_account: str = DEFAULT_SERVICE_ACCOUNT,
        resources: dict[str, dict[str, str]] | None = None,
        api_client: Any = None,
        probe_url: str | None = None,
        poll_s: float = 2.0,
        promote_timeout_s: float = 120.0,
        restore_timeout_s: float = READY_TIMEOUT_S,
        serving_runtime: str = DEFAULT_SERVING_RUNTIME,
        serving_image: str | None = None,
        inference_log_url: str | None = None,
    ) -> None:
        if serving_runtime not in SERVING_RUNTIMES:
            raise KServeError(
                f"unknown serving runtime {serving_runtime!r}: choose one of {', '.join(SERVING_RUNTIMES)}"
            )
        if serving_runtime == "custom" and not serving_image:
            raise KServeError("the custom serving runtime needs the step image to run (serving_image)")
        self.namespace = namespace
        self.isvc_name = name
        self.runtime_version = runtime_version
        self.service_account = service_account
        self.resources = resources if resources is not None else DEFAULT_RESOURCES
        self.probe_url = probe_url.rstrip("/") if probe_url else None
        self.poll_s = poll_s
        self.promote_timeout_s = promote_timeout_s
        self.restore_timeout_s = restore_timeout_s
        self.serving_runtime = serving_runtime
        self.serving_image = serving_image
        # KServe's logger posts every request and response to the log sink (None: the namespace's
        # fashion-log-sink Service; "": no logger).
        if inference_log_url is None:
            inference_log_url = f"http://{LOG_SINK_SERVICE}.{namespace}.svc.cluster.local/"
        self.inference_log_url = inference_log_url
        self._api_client = api_client
        self._api: Any = None
        # Set by deploy_canary: the newest revision before our patch (readiness needs a newer one) and the
        # revision serving production then (the rest of a split must be on it); by wait_ready: the canary's.
        self._superseded_revision: str | None = None
        self._production_revision: str | None = None
        self._canary_revision: str | None = None

    @property
    def ref(self) -> str:
        return f"InferenceService {self.namespace}/{self.isvc_name}"

    # -- the Target protocol --------------------------------------------------------------------

    def live_version(self) -> str | None:
        isvc = self._get()
        return _production(isvc) if isvc else None

    def deploy_canary(self, version: str, storage_uri: str, percent: int) -> None:
        isvc = self._get()
        if isvc is None:
            log.info("%s does not exist: creating it with %s (a first deployment takes all traffic)", self.ref, version)
            self._superseded_revision = self._production_revision = self._canary_revision = None
            self._create(self._manifest(version, storage_uri, percent, production=None))
            return
        isvc = self._reconciled(isvc)
        self._refuse_unmanageable(isvc)
        production = _production(isvc)
        if production == version:
            raise KServeError(f"{self.ref} already serves {version} in production: nothing to deploy")
        if production and _predictor(isvc).get("canaryTrafficPercent") is not None:
            # A canary left behind (a crashed run, or a rollback by an older rollout): its revision may be the
            # latest ready one, which would take this canary's share until the new revision is ready.
            log.warning("%s still carries a canary percent: restoring production %s first", self.ref, production)
            isvc = self._restore(isvc, production)
        self._superseded_revision = _component(isvc).get("latestCreatedRevision")
        self._production_revision = _production_revision(isvc) if production else None
        self._canary_revision = None
        log.info("%s: canary %s at %d%% next to production %s", self.ref, version, percent, production or "(none)")
        recorded = (production, _production_uri(isvc) or "") if production else None
        self._patch(self._manifest(version, storage_uri, percent, production=recorded))

    def wait_ready(self, version: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            isvc = self._require()
            self._refuse_standard_mode(isvc, f"cannot canary {version}")
            problem = self._not_ready(isvc, version)
            if problem is None:
                self._canary_revision = _component(isvc).get("latestCreatedRevision")
                log.info("%s: %s is ready as %s", self.ref, version, self._canary_revision)
                return
            if time.monotonic() >= deadline:
                raise KServeError(f"{self.ref}: {version} not ready after {timeout_s:g}s: {problem}")
            time.sleep(self.poll_s)

    def probe(self, version: str, images: np.ndarray, labels: np.ndarray, batch: int) -> ProbeResult:
        """Errors are measured, never raised: a canary that cannot even be reached fails its probe."""
        isvc = self._require()
        entry = _latest_traffic(isvc)
        url: str | None = (entry or {}).get("url") or (
            _status(isvc).get("url") if _shares(isvc) == {_revision(entry): 100} else None
        )
        problem = None
        if _annotations(isvc).get(CANARY_VERSION) != version:
            problem = f"{self.ref} no longer deploys {version}: someone else changed it"
        elif _revision(entry) != _component(isvc).get("latestCreatedRevision"):
            problem = f"{self.ref}: the latest revision is not the one serving `latest` ({_traffic_summary(isvc)})"
        elif not url:
            problem = f"{self.ref} has no URL for its latest revision: is tag routing ({TAG_ROUTING}) enabled?"
        if problem:
            log.error("%s", problem)
            return ProbeResult(requests=1, errors=1, correct=0, images=0, error_samples=[problem])
        assert url, "a canary without a URL is a problem above"
        path = CODECS[Protocol.V1].predict_path(self.isvc_name)
        if self.probe_url:
            predict_url, headers = f"{self.probe_url}{path}", {"Host": urlsplit(url).netloc}
        else:
            predict_url, headers = f"{url.rstrip('/')}{path}", {}
        log.info(
            "%s: probing %s at %s%s", self.ref, version, predict_url, f" (Host {headers['Host']})" if headers else ""
        )
        result = probe_over_http(predict_url, images, labels, batch, headers=headers)
        # TF Serving names no version in its answers; the tag URL reaches only the revision that
        # serves `version` (the one wait_ready saw become ready), so its answers are that version's.
        anonymous = result.versions.pop("unknown", 0)
        if anonymous:
            result.versions[version] = result.versions.get(version, 0) + anonymous
        return result

    def promote(self, version: str) -> None:
        isvc = self._require()
        if _annotations(isvc).get(CANARY_VERSION) != version:
            raise KServeError(f"{self.ref} no longer deploys {version}: someone else changed it, not promoting")
        canary = self._canary_revision or _component(isvc).get("latestCreatedRevision")
        self._patch({"spec": {"predictor": {"canaryTrafficPercent": None}}})
        self._await_all_traffic(canary, self.promote_timeout_s, f"promoted {version}")
        log.info("%s: %s takes all the traffic", self.ref, version)

    def rollback(self, version: str) -> None:
        isvc = self._get()
        if isvc is None:
            return
        annotations = _annotations(isvc)
        if annotations.get(CANARY_VERSION) != version or _predictor(isvc).get("canaryTrafficPercent") is None:
            log.info("%s does not run %s as a canary: nothing to roll back", self.ref, version)
            return
        production = annotations.get(PRODUCTION_VERSION)
        if not production:
            log.warning("%s: first deployment %s failed: deleting the InferenceService", self.ref, version)
            self._delete()
            return
        log.warning("%s: rolling back %s: restoring production %s", self.ref, version, production)
        self._restore(isvc, production)

    # -- restoring production -------------------------------------------------------------------

    def _restore(self, isvc: dict[str, Any], production: str) -> dict[str, Any]:
        """Put production's spec back so its new revision is the latest ready one; returns the final object.

        1. production's predictor at 0%: KServe keeps everything on the rolled-out revision (production)
           while Knative starts a new revision of it; the rejected canary gets nothing.
        2. once that revision is ready, no percent: it takes all the traffic and is rolled out.
        """
        production_uri = _annotations(isvc).get(PRODUCTION_STORAGE_URI)
        if not production_uri:
            raise KServeError(f"{self.ref} does not record the storageUri of production {production}")
        serving = self._production_revision or _component(isvc).get("latestRolledoutRevision")
        before = _component(isvc).get("latestCreatedRevision")
        self._patch(self._manifest(production, production_uri, 0, production=(production, production_uri)))
        deadline = time.monotonic() + self.restore_timeout_s
        while True:
            isvc = self._require()
            component = _component(isvc)
            created, ready = component.get("latestCreatedRevision"), component.get("latestReadyRevision")
            moved = _shares(isvc) == {serving: 100} if serving else sum(_shares(isvc).values()) == 100
            if moved and created and created != before and created == ready:
                break
            if time.monotonic() >= deadline:
                raise KServeError(
                    f"{self.ref}: restoring production {production}: after {self.restore_timeout_s:g}s the traffic "
                    f"is {_traffic_summary(isvc)} and the restored revision {created} is "
                    f"{'ready' if created == ready else 'not ready'}: check the InferenceService"
                )
            time.sleep(self.poll_s)
        restored = created
        self._patch({"spec": {"predictor": {"canaryTrafficPercent": None}}})
        isvc = self._await_all_traffic(restored, self.promote_timeout_s, f"restored production {production}")
        log.info("%s: production %s serves all the traffic again, from %s", self.ref, production, restored)
        return isvc

    def _await_all_traffic(self, revision: str | None, timeout_s: float, doing: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            isvc = self._require()
            if revision and _shares(isvc) == {revision: 100} and not self._not_serving(isvc):
                return isvc
            if time.monotonic() >= deadline:
                problem = self._not_serving(isvc) or f"traffic is {_traffic_summary(isvc)}, not all on {revision}"
                raise KServeError(f"{self.ref}: {doing} but after {timeout_s:g}s {problem}")
            time.sleep(self.poll_s)

    # -- the manifest ---------------------------------------------------------------------------

    def _manifest(
        self, version: str, storage_uri: str, percent: int | None, production: tuple[str, str] | None
    ) -> dict[str, Any]:
        """The whole InferenceService we want; as a merge patch it also leaves fields we do not own alone."""
        predictor: dict[str, Any] = {
            "serviceAccountName": self.service_account,
            "canaryTrafficPercent": percent,
            # Exactly one implementation: the merge patch removes the other runtime's.
            "model": None,
            "containers": None,
        }
        # Each revision logs under its own version: TF Serving's answers name none, so the sink URL does.
        predictor["logger"] = (
            {"mode": "all", "url": f"{self.inference_log_url}?{urlencode({'version': version})}"}
            if self.inference_log_url
            else None
        )
        if self.serving_runtime == "custom":
            predictor["containers"] = [self._custom_container(storage_uri)]
        else:
            predictor["model"] = {
                "modelFormat": {"name": "tensorflow"},
                "runtimeVersion": self.runtime_version,
                "storageUri": storage_uri,
                "resources": self.resources,
            }
        return {
            "apiVersion": f"{GROUP}/{API_VERSION}",
            "kind": "InferenceService",
            "metadata": {
                "name": self.isvc_name,
                "namespace": self.namespace,
                "labels": {"app.kubernetes.io/managed-by": "fashion-pipeline"},
                "annotations": {
                    DEPLOYMENT_MODE: "Knative",
                    TAG_ROUTING: "true",
                    CANARY_VERSION: version,
                    PRODUCTION_VERSION: production[0] if production else "",
                    PRODUCTION_STORAGE_URI: production[1] if production else "",
                },
            },
            "spec": {"predictor": predictor},
        }

    def _custom_container(self, storage_uri: str) -> dict[str, Any]:
        """The project's own model server from the step image: the server the local tests exercise."""
        return {
            "name": CUSTOM_CONTAINER,
            "image": self.serving_image,
            "command": ["fashion-pipeline"],
            "args": [
                "serve",
                "--storage-uri",
                f"$({STORAGE_URI_ENV})",
                "--host",
                "0.0.0.0",
                "--port",
                str(CUSTOM_PORT),
            ],
            "env": [{"name": STORAGE_URI_ENV, "value": storage_uri}, {"name": "TF_CPP_MIN_LOG_LEVEL", "value": "2"}],
            "ports": [{"containerPort": CUSTOM_PORT, "protocol": "TCP"}],
            # The model's own readiness, not the server's (`/v2/health/ready` is server-wide).
            "readinessProbe": {"httpGet": {"path": ready_path(MODEL_NAME)}},
            "resources": self.resources,
        }

    def manifest(self, version: str, storage_uri: str, percent: int | None = None) -> dict[str, Any]:
        """The InferenceService a first deployment of `version` creates (for `fashion-pipeline lint`)."""
        body = self._manifest(version, storage_uri, percent, production=None)
        body["spec"]["predictor"] = {k: v for k, v in body["spec"]["predictor"].items() if v is not None}
        return body

    def _reconciled(self, isvc: dict[str, Any]) -> dict[str, Any]:
        """The InferenceService once KServe has written a status for it: the deployment mode is only known then."""
        deadline = time.monotonic() + self.promote_timeout_s
        while not _status(isvc).get("deploymentMode") and _annotations(isvc).get(DEPLOYMENT_MODE) is None:
            if time.monotonic() >= deadline:
                raise KServeError(
                    f"{self.ref} shows no deploymentMode after {self.promote_timeout_s:g}s: is KServe's controller "
                    "running? (only Knative mode can take a canary)"
                )
            time.sleep(self.poll_s)
            isvc = self._require()
        return isvc

    def _refuse_unmanageable(self, isvc: dict[str, Any]) -> None:
        self._refuse_standard_mode(isvc, "refusing a canary")
        predictor = _predictor(isvc)
        others = [key for key in OTHER_PREDICTORS if key in predictor]
        if others and "model" not in predictor and "containers" not in predictor:
            raise KServeError(
                f"{self.ref} uses the old predictor.{others[0]} spec; this rollout manages predictor.model or "
                "predictor.containers: migrate it or delete the InferenceService"
            )

    def _refuse_standard_mode(self, isvc: dict[str, Any], doing: str) -> None:
        mode = _status(isvc).get("deploymentMode") or _annotations(isvc).get(DEPLOYMENT_MODE)
        if mode in STANDARD_MODES:
            named = "" if mode == "Standard" else f" ({mode})"
            raise KServeError(
                f"{self.ref} runs in Standard (raw) deployment mode{named}, where KServe ignores "
                f"canaryTrafficPercent: {doing}; delete it so the rollout recreates it in Knative mode"
            )

    # -- readiness ------------------------------------------------------------------------------

    def _not_serving(self, isvc: dict[str, Any]) -> str | None:
        """Why the InferenceService as a whole does not serve (its Ready and PredictorReady conditions)."""
        conditions = _conditions(isvc)
        problems = [
            _describe(kind, conditions.get(kind))
            for kind in ("Ready", "PredictorReady")
            if (conditions.get(kind) or {}).get("status") != "True"
        ]
        return "; ".join(problems) or None

    def _not_ready(self, isvc: dict[str, Any], version: str) -> str | None:
        """Why the latest revision does not (yet) serve `version` with the share we asked for; None when it does."""
        deployed = _annotations(isvc).get(CANARY_VERSION)
        if deployed != version:
            raise KServeError(f"{self.ref} now deploys {deployed or 'something else'}, not {version}")
        component = _component(isvc)
        problems = [self._not_serving(isvc)]
        created, ready = component.get("latestCreatedRevision"), component.get("latestReadyRevision")
        if not created or created == self._superseded_revision:
            problems.append("no new revision created yet")
        elif created != ready:
            problems.append(f"latest revision {created} not ready (latest ready: {ready or 'none'})")
        problems.append(self._traffic_problem(isvc, created))
        return "; ".join(p for p in problems if p) or None

    def _traffic_problem(self, isvc: dict[str, Any], created: str | None) -> str | None:
        """Does the latest revision have the share asked for, summed over traffic entries, the rest production's?"""
        percent = _predictor(isvc).get("canaryTrafficPercent")
        shares = _shares(isvc)
        rest = {revision for revision, share in shares.items() if share and revision != created}
        if percent is None or percent >= 100 or not _annotations(isvc).get(PRODUCTION_VERSION):
            # No percent, or a first deployment: nothing to split with, the revision gets everything
            # (`latest` N% + `prev` (100-N)% over the same revision, once KServe has rolled it out).
            wanted, ok = 100, shares.get(created or "", 0) == 100
        else:
            wanted = int(percent)
            production = {self._production_revision} if self._production_revision else rest
            ok = shares.get(created or "", 0) == wanted and sum(shares.values()) == 100 and rest <= production
        if ok:
            return None
        return f"traffic is {_traffic_summary(isvc)}, waiting for {created or 'a new revision'} at {wanted}%"

    # -- the API --------------------------------------------------------------------------------

    def _custom_objects(self) -> Any:
        if self._api is None:
            from kubernetes import client

            self._api = client.CustomObjectsApi(self._api_client or api_client())
        return self._api

    def _call(self, doing: str, method: str, missing_ok: bool = False, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        api = self._custom_objects()
        call = getattr(api, method)
        try:
            return call(group=GROUP, version=API_VERSION, namespace=self.namespace, plural=PLURAL, **kwargs)
        except ApiException as exc:
            if missing_ok and exc.status == 404:
                return None
            raise KServeError(_api_error(doing, self.ref, exc)) from exc
        except (HTTPError, OSError) as exc:
            host = api.api_client.configuration.host
            raise KServeError(
                f"cannot reach the Kubernetes API at {host} to {doing} {self.ref}: {_one_line(exc)}"
            ) from exc

    def _get(self) -> dict[str, Any] | None:
        isvc: dict[str, Any] | None = self._call(
            "read", "get_namespaced_custom_object", missing_ok=True, name=self.isvc_name
        )
        return isvc

    def _require(self) -> dict[str, Any]:
        isvc = self._get()
        if isvc is None:
            raise KServeError(f"{self.ref} disappeared during the rollout")
        return isvc

    def _create(self, body: dict[str, Any]) -> None:
        body = {**body, "spec": {"predictor": {k: v for k, v in body["spec"]["predictor"].items() if v is not None}}}
        self._call("create", "create_namespaced_custom_object", body=body, field_validation="Strict")

    def _patch(self, body: dict[str, Any]) -> dict[str, Any]:
        patched: dict[str, Any] = self._call(
            "update",
            "patch_namespaced_custom_object",
            name=self.isvc_name,
            body=body,
            field_validation="Strict",
            _content_type=MERGE_PATCH,
        )
        return patched

    def _delete(self) -> None:
        self._call("delete", "delete_namespaced_custom_object", name=self.isvc_name)


def api_client() -> Any:
    """The kubeconfig (KUBECONFIG or ~/.kube/config), else the pod's service account."""
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        # The client reads KUBECONFIG once, when it is imported; read it now instead.
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration)
    except config.ConfigException:
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException as exc:
            raise KServeError(
                "no Kubernetes credentials: set KUBECONFIG (or ~/.kube/config), or run inside the cluster "
                "with a service account"
            ) from exc
    return client.ApiClient(configuration)


def _api_error(doing: str, ref: str, exc: Any) -> str:
    try:
        message = json.loads(exc.body).get("message") or exc.reason
    except (TypeError, ValueError, AttributeError):
        message = exc.reason or exc.body
    message = _one_line(message)
    if exc.status in (401, 403):
        return (
            f"not allowed to {doing} {ref} ({message}): give the rollout's service account "
            f"get/create/patch/delete on {PLURAL}.{GROUP}"
        )
    if exc.status in (400, 422):
        return f"the cluster rejected the {ref} ({doing}): {message}"
    if exc.status == 404:
        return f"cannot {doing} {ref}: {message} (is KServe installed and the namespace there?)"
    return f"the Kubernetes API answered {exc.status} {exc.reason} to {doing} {ref}: {message}"


def _one_line(value: Any) -> str:
    return " ".join(str(value).split())


def _annotations(isvc: dict[str, Any]) -> dict[str, str]:
    return isvc.get("metadata", {}).get("annotations") or {}


def _predictor(isvc: dict[str, Any]) -> dict[str, Any]:
    return (isvc.get("spec") or {}).get("predictor") or {}


def _status(isvc: dict[str, Any]) -> dict[str, Any]:
    return isvc.get("status") or {}


def _component(isvc: dict[str, Any]) -> dict[str, Any]:
    return (_status(isvc).get("components") or {}).get("predictor") or {}


def _conditions(isvc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c.get("type"): c for c in _status(isvc).get("conditions") or []}


def _storage_uri(isvc: dict[str, Any]) -> str | None:
    """The predictor's storageUri, in either runtime: `model.storageUri`, or the custom container's STORAGE_URI."""
    predictor = _predictor(isvc)
    if predictor.get("model"):
        uri: str | None = predictor["model"].get("storageUri")
        return uri
    for container in predictor.get("containers") or []:
        if container.get("name") == CUSTOM_CONTAINER:
            return next((e.get("value") for e in container.get("env") or [] if e.get("name") == STORAGE_URI_ENV), None)
    return None


def _version_of(storage_uri: str | None) -> str | None:
    """A registry version root ends with the version id."""
    if not storage_uri:
        return None
    return storage_uri.rstrip("/").rsplit("/", 1)[-1] or None


def _production(isvc: dict[str, Any]) -> str | None:
    """The version with the production traffic, from how the InferenceService is set up."""
    percent = _predictor(isvc).get("canaryTrafficPercent")
    if percent is None or percent >= 100:
        return _version_of(_storage_uri(isvc))
    # A canary in flight or rolled back: production is what we recorded (nothing on a first deployment).
    return _annotations(isvc).get(PRODUCTION_VERSION) or None


def _production_uri(isvc: dict[str, Any]) -> str | None:
    if _predictor(isvc).get("canaryTrafficPercent") is None:
        return _storage_uri(isvc)
    return _annotations(isvc).get(PRODUCTION_STORAGE_URI) or None


def _revision(entry: dict[str, Any] | None) -> str | None:
    return (entry or {}).get("revisionName")


def _latest_traffic(isvc: dict[str, Any]) -> dict[str, Any] | None:
    traffic = _component(isvc).get("traffic") or []
    return next((t for t in traffic if t.get("latestRevision")), None)


def _shares(isvc: dict[str, Any]) -> dict[str, int]:
    """The revisions with traffic and their shares, summed over the entries naming each (as PropagateStatus does)."""
    shares: dict[str, int] = {}
    for entry in _component(isvc).get("traffic") or []:
        if entry.get("revisionName") and entry.get("percent"):
            shares[entry["revisionName"]] = shares.get(entry["revisionName"], 0) + int(entry["percent"])
    return shares


def _production_revision(isvc: dict[str, Any]) -> str | None:
    """The revision with production traffic: the one with all of it, or the rolled-out side of a split."""
    shares = _shares(isvc)
    whole = [revision for revision, share in shares.items() if share == 100]
    if whole:
        return whole[0]
    return next(
        (t.get("revisionName") for t in _component(isvc).get("traffic") or [] if not t.get("latestRevision")), None
    )


def _traffic_summary(isvc: dict[str, Any]) -> str:
    traffic = _component(isvc).get("traffic") or []
    return ", ".join(f"{t.get('revisionName')} {t.get('percent')}%" for t in traffic) or "none"


def _describe(kind: str, condition: dict[str, Any] | None) -> str:
    if condition is None:
        return f"{kind} not reported"
    detail = ": ".join(part for part in (condition.get("reason"), condition.get("message")) if part)
    return f"{kind}={condition.get('status')}" + (f" ({_one_line(detail)})" if detail else "")
