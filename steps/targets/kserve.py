"""The KServe target: one InferenceService, rolled forward with a Knative-mode canary.

What the InferenceService carries, and why:
- `spec.predictor.model`: format `tensorflow`, a pinned TF Serving `runtimeVersion` (KServe's default
  2.6.2 cannot load a TF 2.21 export) and `storageUri` = the registry's version root.
- `serving.kserve.io/deploymentMode: Knative`: KServe >= 0.16 defaults to Standard (raw) mode, where
  `canaryTrafficPercent` is silently ignored. An existing InferenceService in Standard mode is refused.
- `serving.kserve.io/enable-tag-routing: "true"`: the canary gets its own `latest-` URL, so the probe
  measures the candidate alone, never the production share of a split.
- Our bookkeeping annotations name the production version and its storageUri. KServe copies the
  InferenceService's annotations into the Knative revision template, so changing one creates a new
  revision: they are written only together with a new `storageUri`, never on their own.

Where traffic is, is read from `canaryTrafficPercent`: unset means the latest revision has all of it
(live = the version in `storageUri`); set means a canary is in flight or was rolled back (live = the
production annotation). Writes are JSON merge patches through `CustomObjectsApi` with plain dicts
(the typed `KServeClient` write path breaks with kubernetes 37), with server-side strict field
validation so a cluster rejects an unknown field instead of silently dropping it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from steps.errors import UserError
from steps.registry import MODEL_NAME
from steps.targets import ProbeResult
from steps.targets.probe import probe_over_http

log = logging.getLogger(__name__)

GROUP, API_VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
# The `tensorflow/serving` image tag. There is no TF Serving 2.21 (tensorflow/serving#4130): 2.20.0 is
# the newest release, and tests/test_serving_runtime.py checks that a TF 2.21 export answers under it.
DEFAULT_RUNTIME_VERSION = "2.20.0"
DEFAULT_SERVICE_ACCOUNT = "fashion-mnist-predictor"
DEFAULT_RESOURCES: dict[str, dict[str, str]] = {
    "requests": {"cpu": "500m", "memory": "1Gi"},
    "limits": {"cpu": "1", "memory": "2Gi"},
}
MERGE_PATCH = "application/merge-patch+json"

DEPLOYMENT_MODE = "serving.kserve.io/deploymentMode"
TAG_ROUTING = "serving.kserve.io/enable-tag-routing"
PRODUCTION_VERSION = "fashion-pipeline.io/production-version"
PRODUCTION_STORAGE_URI = "fashion-pipeline.io/production-storage-uri"
CANARY_VERSION = "fashion-pipeline.io/canary-version"
KNATIVE_MODES = frozenset({"Knative", "Serverless"})  # Serverless: the name before KServe 0.16
STANDARD_MODES = frozenset({"Standard", "RawDeployment"})
OTHER_PREDICTORS = ("tensorflow", "sklearn", "xgboost", "pytorch", "triton", "onnx", "pmml", "lightgbm", "paddle")


class KServeError(UserError):
    """The cluster refused, or the InferenceService did not reach the state the rollout needs."""


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
    ) -> None:
        self.namespace = namespace
        self.isvc_name = name
        self.runtime_version = runtime_version
        self.service_account = service_account
        self.resources = resources if resources is not None else DEFAULT_RESOURCES
        self.probe_url = probe_url.rstrip("/") if probe_url else None
        self.poll_s = poll_s
        self.promote_timeout_s = promote_timeout_s
        self._api_client = api_client
        self._api: Any = None
        # Set by deploy_canary: the newest revision before our patch (readiness needs a newer one) and
        # the revision serving production then (where a rollback must send the traffic).
        self._superseded_revision: str | None = None
        self._production_revision: str | None = None

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
            self._superseded_revision = self._production_revision = None
            self._create(self._manifest(version, storage_uri, percent, production=None))
            return
        isvc = self._reconciled(isvc)
        self._refuse_unmanageable(isvc)
        production = _production(isvc)
        if production == version:
            raise KServeError(f"{self.ref} already serves {version} in production: nothing to deploy")
        model = _predictor(isvc).get("model") or {}
        self._superseded_revision = (
            _component(isvc).get("latestCreatedRevision") if model.get("storageUri") != storage_uri else None
        )
        self._production_revision = _production_revision(isvc) if production else None
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
                log.info("%s: %s is ready", self.ref, version)
                return
            if time.monotonic() >= deadline:
                raise KServeError(f"{self.ref}: {version} not ready after {timeout_s:g}s: {problem}")
            time.sleep(self.poll_s)

    def probe(self, version: str, images: np.ndarray, labels: np.ndarray, batch: int) -> ProbeResult:
        """Errors are measured, never raised: a canary that cannot even be reached fails its probe."""
        isvc = self._require()
        entry = _latest_traffic(isvc)
        url = (entry or {}).get("url") or (_status(isvc).get("url") if entry and entry.get("percent") == 100 else None)
        problem = None
        if _annotations(isvc).get(CANARY_VERSION) != version:
            problem = f"{self.ref} no longer deploys {version}: someone else changed it"
        elif not url:
            problem = f"{self.ref} has no URL for its latest revision: is tag routing ({TAG_ROUTING}) enabled?"
        if problem:
            log.error("%s", problem)
            return ProbeResult(requests=1, errors=1, correct=0, images=0, error_samples=[problem])
        path = f"/v1/models/{self.isvc_name}:predict"
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
        self._patch({"spec": {"predictor": {"canaryTrafficPercent": None}}})
        deadline = time.monotonic() + self.promote_timeout_s
        while True:
            isvc = self._require()
            problem = self._not_ready(isvc, version)
            if problem is None:
                log.info("%s: %s takes all the traffic", self.ref, version)
                return
            if time.monotonic() >= deadline:
                raise KServeError(f"{self.ref}: promoted {version} but after {self.promote_timeout_s:g}s {problem}")
            time.sleep(self.poll_s)

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
        component = _component(isvc)
        created, ready = component.get("latestCreatedRevision"), component.get("latestReadyRevision")
        if created and created == ready and created != self._superseded_revision:
            # The canary revision is up: 0% on it sends everything back to the rolled-out revision.
            log.warning("%s: rolling back %s: production %s takes all the traffic again", self.ref, version, production)
            patched = self._patch({"spec": {"predictor": {"canaryTrafficPercent": 0}}})
        else:
            # The canary never became ready. While the latest ready revision is the rolled-out one, KServe
            # reads 0% as "roll back the rolled-out revision" and routes to the one before it, and a late
            # canary would take over a plain 100%: restoring the production spec is what keeps production.
            production_uri = annotations.get(PRODUCTION_STORAGE_URI)
            if not production_uri:
                raise KServeError(f"{self.ref} does not record the storageUri of production {production}")
            log.warning("%s: %s never became ready: restoring production %s", self.ref, version, production)
            restore = self._manifest(production, production_uri, None, production=(production, production_uri))
            patched = self._patch(restore)
        self._await_rollback(patched, version, production)

    def _await_rollback(self, patched: dict[str, Any], version: str, production: str) -> None:
        """Wait until the controller has the rollback and all traffic is on production's revision(s)."""
        generation = patched.get("metadata", {}).get("generation") or 0
        canary_revision = _component(patched).get("latestCreatedRevision")
        deadline = time.monotonic() + self.promote_timeout_s
        while True:
            isvc = self._require()
            observed = _status(isvc).get("observedGeneration") or 0
            serving = {t.get("revisionName") for t in _component(isvc).get("traffic") or [] if t.get("percent")}
            # A restored production spec gets a revision of its own, newer than the canary's.
            allowed = {self._production_revision} if self._production_revision else serving - {canary_revision}
            restored = _component(isvc).get("latestCreatedRevision")
            if _predictor(isvc).get("canaryTrafficPercent") is None and restored != canary_revision:
                allowed.add(restored)
            if observed >= generation and serving and serving <= allowed:
                log.info("%s: %s rolled back; traffic: %s", self.ref, version, _traffic_summary(isvc))
                return
            if time.monotonic() >= deadline:
                raise KServeError(
                    f"{self.ref}: rolled back {version}, but after {self.promote_timeout_s:g}s the traffic is "
                    f"{_traffic_summary(isvc)}, not all on production {production}: check the InferenceService"
                )
            time.sleep(self.poll_s)

    # -- the manifest ---------------------------------------------------------------------------

    def _manifest(
        self, version: str, storage_uri: str, percent: int | None, production: tuple[str, str] | None
    ) -> dict[str, Any]:
        """The whole InferenceService we want; as a merge patch it also leaves fields we do not own alone."""
        predictor: dict[str, Any] = {
            "serviceAccountName": self.service_account,
            "canaryTrafficPercent": percent,
            "model": {
                "modelFormat": {"name": "tensorflow"},
                "runtimeVersion": self.runtime_version,
                "storageUri": storage_uri,
                "resources": self.resources,
            },
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
        if others and "model" not in predictor:
            raise KServeError(
                f"{self.ref} uses the old predictor.{others[0]} spec; this rollout manages predictor.model: "
                "migrate it or delete the InferenceService"
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

    def _not_ready(self, isvc: dict[str, Any], version: str) -> str | None:
        """Why the latest revision does not (yet) serve `version` with the share we asked for; None when it does."""
        deployed = _annotations(isvc).get(CANARY_VERSION)
        if deployed != version:
            raise KServeError(f"{self.ref} now deploys {deployed or 'something else'}, not {version}")
        status, component = _status(isvc), _component(isvc)
        generation, observed = isvc.get("metadata", {}).get("generation"), status.get("observedGeneration")
        conditions = _conditions(isvc)
        problems = []
        # KServe copies Knative's observedGeneration, which can run ahead of ours, never behind once seen.
        if generation is not None and (observed is None or observed < generation):
            problems.append(f"generation {generation} not observed yet (observed {observed})")
        for kind in ("Ready", "PredictorReady"):
            condition = conditions.get(kind)
            if condition is None or condition.get("status") != "True":
                problems.append(_describe(kind, condition))
        created, ready = component.get("latestCreatedRevision"), component.get("latestReadyRevision")
        if not created or created == self._superseded_revision:
            problems.append("no new revision created yet")
        elif created != ready:
            problems.append(f"latest revision {created} not ready (latest ready: {ready or 'none'})")
        problem = self._traffic_problem(isvc, created)
        if problem:
            problems.append(problem)
        return "; ".join(problems) or None

    def _traffic_problem(self, isvc: dict[str, Any], created: str | None) -> str | None:
        """Is the latest revision's share the one asked for, with the rest on production's revision?"""
        percent = _predictor(isvc).get("canaryTrafficPercent")
        traffic = [t for t in _component(isvc).get("traffic") or [] if t.get("percent")]
        latest = _latest_traffic(isvc)
        share = latest.get("percent") if latest and latest.get("revisionName") == created else 0
        others = {t.get("revisionName") for t in traffic if t is not latest}
        if percent is None or percent >= 100:
            wanted, ok = 100, share == 100
        elif not _annotations(isvc).get(PRODUCTION_VERSION):
            # A first deployment has nothing to split with: KServe gives it everything.
            wanted, ok = 100, share == 100 or (share == percent and created not in others)
        else:
            wanted = int(percent)
            ok = share == percent and bool(others) and created not in others
            if self._production_revision:
                ok = ok and others == {self._production_revision}
        if ok:
            return None
        return f"traffic is {_traffic_summary(isvc)}, waiting for {created or 'a new revision'} at {wanted}%"

    # -- the API --------------------------------------------------------------------------------

    def _custom_objects(self) -> Any:
        if self._api is None:
            from kubernetes import client

            self._api = client.CustomObjectsApi(self._api_client or _default_api_client())
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
        return self._call("read", "get_namespaced_custom_object", missing_ok=True, name=self.isvc_name)  # type: ignore[no-any-return]

    def _require(self) -> dict[str, Any]:
        isvc = self._get()
        if isvc is None:
            raise KServeError(f"{self.ref} disappeared during the rollout")
        return isvc

    def _create(self, body: dict[str, Any]) -> None:
        self._call("create", "create_namespaced_custom_object", body=body, field_validation="Strict")

    def _patch(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._call(  # type: ignore[no-any-return]
            "update",
            "patch_namespaced_custom_object",
            name=self.isvc_name,
            body=body,
            field_validation="Strict",
            _content_type=MERGE_PATCH,
        )

    def _delete(self) -> None:
        self._call("delete", "delete_namespaced_custom_object", name=self.isvc_name)


def _default_api_client() -> Any:
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


def _version_of(storage_uri: str | None) -> str | None:
    """A registry version root ends with the version id."""
    if not storage_uri:
        return None
    return storage_uri.rstrip("/").rsplit("/", 1)[-1] or None


def _production(isvc: dict[str, Any]) -> str | None:
    """The version with the production traffic, from how the InferenceService is set up."""
    predictor = _predictor(isvc)
    percent = predictor.get("canaryTrafficPercent")
    if percent is None or percent >= 100:
        return _version_of((predictor.get("model") or {}).get("storageUri"))
    # A canary in flight or rolled back: production is what we recorded (nothing on a first deployment).
    return _annotations(isvc).get(PRODUCTION_VERSION) or None


def _production_uri(isvc: dict[str, Any]) -> str | None:
    if _predictor(isvc).get("canaryTrafficPercent") is None:
        return (_predictor(isvc).get("model") or {}).get("storageUri")
    return _annotations(isvc).get(PRODUCTION_STORAGE_URI) or None


def _latest_traffic(isvc: dict[str, Any]) -> dict[str, Any] | None:
    traffic = _component(isvc).get("traffic") or []
    return next((t for t in traffic if t.get("latestRevision")), None)


def _production_revision(isvc: dict[str, Any]) -> str | None:
    """The revision with production traffic: the latest with all of it, or the other side of a split."""
    traffic = _component(isvc).get("traffic") or []
    if _predictor(isvc).get("canaryTrafficPercent") is None:
        return _component(isvc).get("latestReadyRevision")
    return next((t.get("revisionName") for t in traffic if not t.get("latestRevision") and t.get("percent")), None)


def _traffic_summary(isvc: dict[str, Any]) -> str:
    traffic = _component(isvc).get("traffic") or []
    return ", ".join(f"{t.get('revisionName')} {t.get('percent')}%" for t in traffic) or "none"


def _describe(kind: str, condition: dict[str, Any] | None) -> str:
    if condition is None:
        return f"{kind} not reported"
    detail = ": ".join(part for part in (condition.get("reason"), condition.get("message")) if part)
    return f"{kind}={condition.get('status')}" + (f" ({_one_line(detail)})" if detail else "")
