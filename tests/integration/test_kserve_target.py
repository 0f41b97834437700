"""The KServe target against a simulated KServe control plane, with real models and real model servers.

The real `kubernetes` client talks to the simulator through a kubeconfig; every InferenceService it
writes is validated strictly against the KServe CRD; each revision is a real `fashion-pipeline serve`
process, so probes get real predictions.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from kserve_sim import KServeSim, free_port

from steps.dataset import fetch_dataset, load_dataset
from steps.registry import Registry
from steps.storage import open_store
from steps.targets.kserve import DEFAULT_RESOURCES, DEFAULT_RUNTIME_VERSION, KServeError, KServeTarget
from steps.train import TrainParams, train

pytestmark = pytest.mark.slow

NAME = "fashion-mnist"
READY_TIMEOUT_S = 60.0
HOLDOUT = 256
_namespaces = itertools.count(1)


@dataclass
class Models:
    registry: Registry
    dataset_uri: str
    a: str
    b: str
    c: str
    images: np.ndarray  # the last HOLDOUT images of the test split
    labels: np.ndarray

    def uri(self, version: str) -> str:
        return self.registry.version_uri(version)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, real_mirror: Path) -> Models:
    """Three small, different real models in one registry (seconds each)."""
    root = tmp_path_factory.mktemp("kserve-models")
    store = open_store(str(root / "store"))
    dataset = fetch_dataset(store, [(str(real_mirror), False)])
    registry = Registry(store)
    trained = [
        train(dataset.uri, registry, TrainParams(epochs=1, train_limit=2000, seed=seed), root / f"m{seed}", "test")
        for seed in (1, 2, 3)
    ]
    data = load_dataset(dataset.uri)
    a, b, c = (result.version for result in trained)
    return Models(registry, dataset.uri, a, b, c, data.x_test[-HOLDOUT:], data.y_test[-HOLDOUT:])


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory, models: Models) -> Iterator[KServeSim]:
    with KServeSim(tmp_path_factory.mktemp("kserve-sim")) as sim:
        for version in (models.a, models.b, models.c):
            sim.start_model_server(models.uri(version))
        sim.wait_model_servers()
        yield sim


@pytest.fixture(scope="module")
def kubeconfig(sim: KServeSim, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sim.write_kubeconfig(tmp_path_factory.mktemp("kube") / "config")


@pytest.fixture(scope="module")
def api_client(kubeconfig: Path) -> Iterator[Any]:
    from kubernetes import config

    client = config.new_client_from_config(config_file=str(kubeconfig))
    yield client
    client.close()


@pytest.fixture
def namespace() -> str:
    return f"team-{next(_namespaces)}"


def make_target(sim: KServeSim, api_client: Any, namespace: str, **options: Any) -> KServeTarget:
    """A target probing through the simulated ingress (like a port-forward to Istio's gateway)."""
    options = {"probe_url": sim.ingress_url, **options}
    return KServeTarget(namespace, api_client=api_client, poll_s=0.05, promote_timeout_s=30, **options)


def deploy_and_promote(target: KServeTarget, models: Models, version: str) -> None:
    target.deploy_canary(version, models.uri(version), 10)
    target.wait_ready(version, READY_TIMEOUT_S)
    target.promote(version)


def user_request(sim: KServeSim, namespace: str, image: np.ndarray) -> int:
    """One prediction through the ingress at the InferenceService's URL, as a user sends it; the status."""
    response = requests.post(
        f"{sim.ingress_url}/v1/models/{NAME}:predict",
        json={"instances": image[None].tolist()},
        headers={"Host": sim.host(namespace, NAME)},
        timeout=10,
    )
    return response.status_code


def served_versions(sim: KServeSim, namespace: str, models: Models, requests_: int = 10) -> dict[str, int]:
    """Which versions answer users: counted at the revisions' queue-proxies (TF Serving names no version)."""
    before = sim.served_by_storage_uri(namespace, NAME)
    for i in range(requests_):
        assert user_request(sim, namespace, models.images[i]) == 200
    after = sim.served_by_storage_uri(namespace, NAME)
    by_uri = {uri: after[uri] - before.get(uri, 0) for uri in after if after[uri] != before.get(uri, 0)}
    version_of = {models.uri(v): v for v in (models.a, models.b, models.c)}
    return {version_of[uri]: count for uri, count in by_uri.items()}


def api_requests(sim: KServeSim, namespace: str, method: str) -> list[dict[str, Any]]:
    return [r for r in sim.requests if r["method"] == method and f"/namespaces/{namespace}/" in r["path"]]


def traffic(sim: KServeSim, namespace: str) -> list[tuple[str, int, str | None]]:
    isvc = sim.get(namespace, NAME)
    assert isvc is not None
    return [
        (t["revisionName"], t["percent"], t.get("tag")) for t in isvc["status"]["components"]["predictor"]["traffic"]
    ]


@pytest.mark.parametrize("percent", [10, 100], ids=["with a canary percent", "at 100%"])
def test_first_deployment_creates_the_inference_service_with_the_pinned_runtime_and_the_version_root(
    percent: int, sim: KServeSim, api_client: Any, models: Models, namespace: str
) -> None:
    kserve = make_target(sim, api_client, namespace)
    assert kserve.live_version() is None

    kserve.deploy_canary(models.a, models.uri(models.a), percent)

    (create,) = api_requests(sim, namespace, "POST")
    assert create["query"]["fieldValidation"] == "Strict"
    isvc = sim.get(namespace, NAME)
    assert isvc is not None
    predictor = isvc["spec"]["predictor"]
    assert predictor["model"] == {
        "modelFormat": {"name": "tensorflow"},
        "runtimeVersion": DEFAULT_RUNTIME_VERSION,
        "storageUri": models.registry.version_uri(models.a),
        "resources": DEFAULT_RESOURCES,
    }
    assert DEFAULT_RUNTIME_VERSION == "2.20.0"  # the newest TF Serving image; there is no 2.21 (serving#4130)
    assert predictor["serviceAccountName"] == "fashion-mnist-predictor"
    assert predictor["canaryTrafficPercent"] == percent
    # KServe's logger: every request and response to the namespace's log sink, under this revision's version.
    sink = f"http://fashion-log-sink.{namespace}.svc.cluster.local/"
    assert predictor["logger"] == {"mode": "all", "url": f"{sink}?version={models.a}"}
    annotations = isvc["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == "Knative"
    assert annotations["serving.kserve.io/enable-tag-routing"] == "true"

    kserve.wait_ready(models.a, READY_TIMEOUT_S)
    # KServe rolls the first revision out, then splits the percent over that same revision.
    rev1 = f"{NAME}-predictor-00001"
    split = [(rev1, 10, "latest"), (rev1, 90, "prev")] if percent == 10 else [(rev1, 100, "latest")]
    assert traffic(sim, namespace) == split
    assert kserve.live_version() == (models.a if percent == 100 else None)  # a canary at 100% already serves all

    kserve.promote(models.a)
    isvc = sim.get(namespace, NAME)
    assert isvc is not None and "canaryTrafficPercent" not in isvc["spec"]["predictor"]
    assert traffic(sim, namespace) == [(rev1, 100, "latest")]
    assert kserve.live_version() == models.a
    assert served_versions(sim, namespace, models) == {models.a: 10}
    assert sim.validator.validate(isvc) == []  # the simulator's own status fits the CRD too


def test_a_canary_takes_its_share_and_the_probe_reaches_the_canary_alone(
    sim: KServeSim, api_client: Any, models: Models, namespace: str
) -> None:
    kserve = make_target(sim, api_client, namespace)
    deploy_and_promote(kserve, models, models.a)

    kserve.deploy_canary(models.b, models.uri(models.b), 20)

    patch = api_requests(sim, namespace, "PATCH")[-1]
    assert patch["content_type"] == "application/merge-patch+json"
    assert patch["query"]["fieldValidation"] == "Strict"
    assert patch["body"]["spec"]["predictor"]["canaryTrafficPercent"] == 20
    assert patch["body"]["spec"]["predictor"]["model"]["storageUri"] == models.uri(models.b)
    kserve.wait_ready(models.b, READY_TIMEOUT_S)
    assert traffic(sim, namespace) == [
        (f"{NAME}-predictor-00002", 20, "latest"),
        (f"{NAME}-predictor-00001", 80, "prev"),
    ]
    assert sim.traffic_by_storage_uri(namespace, NAME) == {models.uri(models.b): 20, models.uri(models.a): 80}
    assert served_versions(sim, namespace, models) == {models.a: 8, models.b: 2}
    assert kserve.live_version() == models.a

    result = kserve.probe(models.b, models.images, models.labels, batch=32)

    assert (result.requests, result.errors, result.images) == (HOLDOUT // 32, 0, HOLDOUT)
    assert result.versions == {models.b: HOLDOUT // 32}  # the canary alone, not the split
    assert result.accuracy > 0.6
    assert 0 < result.p95_ms < 2000

    kserve.promote(models.b)
    isvc = sim.get(namespace, NAME)
    assert isvc is not None and "canaryTrafficPercent" not in isvc["spec"]["predictor"]
    assert sim.traffic_by_storage_uri(namespace, NAME) == {models.uri(models.b): 100}
    assert kserve.live_version() == models.b
    assert served_versions(sim, namespace, models) == {models.b: 10}


def _assert_production_restored(sim: KServeSim, namespace: str, models: Models, production: str) -> None:
    """Production's spec is back, without a percent, and its newest revision is the latest ready one."""
    isvc = sim.get(namespace, NAME)
    assert isvc is not None
    predictor, component = isvc["spec"]["predictor"], isvc["status"]["components"]["predictor"]
    if "model" in predictor:
        assert predictor["model"]["storageUri"] == models.uri(production)
    else:
        assert predictor["containers"][0]["env"][0] == {"name": "STORAGE_URI", "value": models.uri(production)}
    assert "canaryTrafficPercent" not in predictor
    newest = sim.revisions(namespace, NAME)[-1]
    assert newest.storage_uri == models.uri(production)
    assert component["latestReadyRevision"] == component["latestRolledoutRevision"] == newest.name
    assert traffic(sim, namespace) == [(newest.name, 100, "latest")]


@pytest.mark.parametrize("fault", ["errors", "wrong_classes"])
def test_a_canary_failing_its_probe_is_rolled_back_and_production_serves_everything(
    fault: str, sim: KServeSim, api_client: Any, models: Models, namespace: str
) -> None:
    kserve = make_target(sim, api_client, namespace)
    deploy_and_promote(kserve, models, models.a)
    sim.inject_fault(namespace, fault, storage_uri=models.uri(models.b))
    kserve.deploy_canary(models.b, models.uri(models.b), 10)
    kserve.wait_ready(models.b, READY_TIMEOUT_S)

    result = kserve.probe(models.b, models.images, models.labels, batch=32)
    if fault == "errors":
        assert result.errors == result.requests and "HTTP 500" in result.error_samples[0]
    else:
        assert result.errors == 0 and result.accuracy < 0.3

    kserve.rollback(models.b)

    _assert_production_restored(sim, namespace, models, models.a)
    assert sim.traffic_by_storage_uri(namespace, NAME) == {models.uri(models.a): 100}
    assert kserve.live_version() == models.a
    assert served_versions(sim, namespace, models) == {models.a: 10}


def test_a_canary_that_never_becomes_ready_times_out_naming_the_conditions_and_production_keeps_serving(
    sim: KServeSim, api_client: Any, models: Models, namespace: str
) -> None:
    kserve = make_target(sim, api_client, namespace)
    deploy_and_promote(kserve, models, models.a)
    deploy_and_promote(kserve, models, models.b)  # a revision rolled out before production
    sim.inject_fault(namespace, "never_ready", revision=3)
    kserve.deploy_canary(models.a, models.uri(models.a), 10)

    with pytest.raises(KServeError, match=r"not ready after 1s: .*Ready=Unknown \(RevisionMissing") as error:
        kserve.wait_ready(models.a, 1.0)
    assert "\n" not in str(error.value)

    kserve.rollback(models.a)

    _assert_production_restored(sim, namespace, models, models.b)
    assert sim.traffic_by_storage_uri(namespace, NAME) == {models.uri(models.b): 100}
    assert kserve.live_version() == models.b
    assert served_versions(sim, namespace, models) == {models.b: 10}


def test_a_rejected_canary_never_serves_a_user_again_even_when_the_next_canary_never_becomes_ready(
    sim: KServeSim, api_client: Any, models: Models, namespace: str
) -> None:
    """KServe keeps a 0%-rolled-back canary as Knative's latest ready revision: without restoring production,
    the next canary's share (and, when it never becomes ready, a restore's 100%) would reach it."""
    kserve = make_target(sim, api_client, namespace)
    deploy_and_promote(kserve, models, models.a)
    sim.inject_fault(namespace, "wrong_classes", storage_uri=models.uri(models.b))
    kserve.deploy_canary(models.b, models.uri(models.b), 10)
    kserve.wait_ready(models.b, READY_TIMEOUT_S)
    assert kserve.probe(models.b, models.images, models.labels, batch=32).accuracy < 0.3
    kserve.rollback(models.b)
    rejected = sim.served_by_storage_uri(namespace, NAME).get(models.uri(models.b), 0)

    users: list[int] = []
    stop = threading.Event()

    def keep_predicting() -> None:
        while not stop.is_set() and len(users) < 2000:
            users.append(user_request(sim, namespace, models.images[len(users) % HOLDOUT]))

    thread = threading.Thread(target=keep_predicting, daemon=True)
    thread.start()
    try:
        sim.inject_fault(namespace, "never_ready", storage_uri=models.uri(models.c))
        next_run = make_target(sim, api_client, namespace)
        next_run.deploy_canary(models.c, models.uri(models.c), 10)
        with pytest.raises(KServeError, match="not ready after"):
            next_run.wait_ready(models.c, 1.0)
        next_run.rollback(models.c)
    finally:
        stop.set()
        thread.join(timeout=30)

    assert users and set(users) == {200}
    assert sim.served_by_storage_uri(namespace, NAME).get(models.uri(models.b), 0) == rejected
    _assert_production_restored(sim, namespace, models, models.a)
    assert served_versions(sim, namespace, models) == {models.a: 10}


def test_readiness_does_not_compare_knatives_generation_with_the_inference_services(
    sim: KServeSim, api_client: Any, models: Models, namespace: str
) -> None:
    """`status.observedGeneration` is the Knative Service's: edits KServe reconciles together leave it behind."""
    from kubernetes import client

    kserve = make_target(sim, api_client, namespace)
    deploy_and_promote(kserve, models, models.a)
    objects = client.CustomObjectsApi(api_client)
    for cpu in ("750m", DEFAULT_RESOURCES["requests"]["cpu"]):  # an edit and its revert, reconciled as one
        body = {"spec": {"predictor": {"model": {"resources": {"requests": {"cpu": cpu}}}}}}
        objects.patch_namespaced_custom_object(
            "serving.kserve.io", "v1beta1", namespace, "inferenceservices", NAME, body
        )

    kserve.deploy_canary(models.b, models.uri(models.b), 10)
    kserve.wait_ready(models.b, READY_TIMEOUT_S)
    kserve.promote(models.b)

    isvc = sim.get(namespace, NAME)
    assert isvc is not None and isvc["status"]["observedGeneration"] < isvc["metadata"]["generation"]
    assert kserve.live_version() == models.b


def test_a_failed_first_deployment_is_deleted_on_rollback(
    sim: KServeSim, api_client: Any, models: Models, namespace: str
) -> None:
    kserve = make_target(sim, api_client, namespace)
    sim.inject_fault(namespace, "never_ready", storage_uri=models.uri(models.a))
    kserve.deploy_canary(models.a, models.uri(models.a), 10)
    with pytest.raises(KServeError, match=r"not ready after 0\.5s"):
        kserve.wait_ready(models.a, 0.5)

    kserve.rollback(models.a)

    assert sim.get(namespace, NAME) is None
    assert len(api_requests(sim, namespace, "DELETE")) == 1
    assert kserve.live_version() is None


@pytest.mark.parametrize("annotations", [{"serving.kserve.io/deploymentMode": "RawDeployment"}, {}])
def test_a_standard_mode_inference_service_refuses_a_canary(
    annotations: dict[str, str],
    sim: KServeSim,
    api_client: Any,
    models: Models,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kubernetes import client

    # No annotation: the cluster's default decides; KServe's code default (no ConfigMap entry) is Standard.
    monkeypatch.setattr(sim, "default_mode", "Standard")
    existing = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": NAME, "annotations": annotations},
        "spec": {"predictor": {"model": {"modelFormat": {"name": "tensorflow"}, "storageUri": models.uri(models.a)}}},
    }
    client.CustomObjectsApi(api_client).create_namespaced_custom_object(
        "serving.kserve.io", "v1beta1", namespace, "inferenceservices", existing
    )
    kserve = make_target(sim, api_client, namespace)

    with pytest.raises(
        KServeError, match=r"Standard \(raw\) deployment mode.*, where KServe ignores canaryTrafficPercent"
    ):
        kserve.deploy_canary(models.b, models.uri(models.b), 10)
    assert api_requests(sim, namespace, "PATCH") == []


@pytest.mark.parametrize(
    ("options", "percent", "expected"),
    [
        (
            {"resources": {"requests": {"cpu": "500m"}, "limit": {"cpu": "1"}}},
            10,
            r"rejected .*spec\.predictor\.model\.resources\.limit: unknown field 'limit' \(did you mean 'limits'\?\)",
        ),
        ({}, 150, r"rejected .*canaryTrafficPercent 150 is not between 0 and 100"),
    ],
    ids=["unknown field", "webhook"],
)
def test_an_inference_service_the_cluster_rejects_is_a_clear_error(
    options: dict[str, Any],
    percent: int,
    expected: str,
    sim: KServeSim,
    api_client: Any,
    models: Models,
    namespace: str,
) -> None:
    kserve = make_target(sim, api_client, namespace, **options)
    with pytest.raises(KServeError, match=expected) as error:
        kserve.deploy_canary(models.a, models.uri(models.a), percent)
    assert "\n" not in str(error.value)
    assert sim.get(namespace, NAME) is None


def test_the_api_server_is_found_through_kubeconfig(
    sim: KServeSim, kubeconfig: Path, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    assert KServeTarget(namespace).live_version() is None
    assert api_requests(sim, namespace, "GET")


def test_an_unreachable_api_server_is_a_clear_error(tmp_path: Path) -> None:
    from kubernetes import config

    path = tmp_path / "config"
    address = f"http://127.0.0.1:{free_port()}"
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "gone", "cluster": {"server": address}}],
                "users": [{"name": "u", "user": {}}],
                "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "u"}}],
                "current-context": "gone",
            }
        )
    )
    kserve = KServeTarget("team", api_client=config.new_client_from_config(config_file=str(path)))
    with pytest.raises(KServeError, match=f"cannot reach the Kubernetes API at {address} to read"):
        kserve.live_version()


@pytest.mark.parametrize("fault", [None, "wrong_classes"])
def test_rollout_on_kserve_promotes_or_rolls_back_and_the_registry_follows(
    fault: str | None, sim: KServeSim, api_client: Any, models: Models, namespace: str, tmp_path: Path
) -> None:
    from steps.rollout import RolloutError, RolloutPolicy, rollout

    sim.direct_urls(namespace)  # tag URLs reachable as they are: no probe URL, no Host header
    kserve = KServeTarget(namespace, api_client=api_client, poll_s=0.05, promote_timeout_s=30)
    deploy_and_promote(kserve, models, models.a)
    registry = models.registry
    registry.set_alias("production", models.a, "test: A is live on the InferenceService", actor="test")
    if fault:
        sim.inject_fault(namespace, fault, storage_uri=models.uri(models.b))
    policy = RolloutPolicy(canary_percent=10, ready_timeout_s=READY_TIMEOUT_S, holdout=HOLDOUT)

    if fault is None:
        record = rollout(registry, models.b, models.dataset_uri, kserve, policy, "test", tmp_path)
        assert record["outcome"] == "promoted"
        assert record["probe"]["versions"] == {models.b: HOLDOUT // policy.probe_batch}
        assert {c["name"]: c["threshold"] for c in record["checks"]}["ready"] == READY_TIMEOUT_S
        expected = models.b
    else:
        with pytest.raises(RolloutError, match=r"rolled back .* failed its probe: accuracy"):
            rollout(registry, models.b, models.dataset_uri, kserve, policy, "test", tmp_path)
        record = json.loads((tmp_path / "rollout.json").read_text())
        assert (record["outcome"], record["served_version"]) == ("rolled-back", models.a)
        expected = models.a

    assert record["live_champion"] == models.a
    assert registry.alias("production")["version"] == expected  # type: ignore[index]
    assert kserve.live_version() == expected
    assert sim.traffic_by_storage_uri(namespace, NAME) == {models.uri(expected): 100}
    assert served_versions(sim, namespace, models) == {expected: 10}


STEP_IMAGE = "docker.io/fashion-pipeline/steps:test"


def test_the_custom_runtime_runs_the_step_images_server_and_canaries_probes_and_rolls_back_the_same(
    sim: KServeSim, api_client: Any, models: Models, namespace: str
) -> None:
    deploy_and_promote(make_target(sim, api_client, namespace), models, models.a)  # TF Serving in production
    custom = make_target(sim, api_client, namespace, serving_runtime="custom", serving_image=STEP_IMAGE)

    custom.deploy_canary(models.b, models.uri(models.b), 20)

    isvc = sim.get(namespace, NAME)
    assert isvc is not None and "model" not in isvc["spec"]["predictor"]
    (container,) = isvc["spec"]["predictor"]["containers"]
    assert (container["name"], container["image"], container["command"]) == (
        "kserve-container",
        STEP_IMAGE,
        ["fashion-pipeline"],
    )
    assert container["args"][:3] == ["serve", "--storage-uri", "$(STORAGE_URI)"]
    assert {"name": "STORAGE_URI", "value": models.uri(models.b)} in container["env"]
    custom.wait_ready(models.b, 2 * READY_TIMEOUT_S)
    result = custom.probe(models.b, models.images, models.labels, batch=32)
    # Our server names its version (read from the manifest KServe's storage initializer copied), TF Serving does not.
    assert result.versions == {models.b: HOLDOUT // 32} and result.errors == 0
    custom.promote(models.b)
    assert custom.live_version() == models.b
    assert served_versions(sim, namespace, models) == {models.b: 10}

    sim.inject_fault(namespace, "wrong_classes", storage_uri=models.uri(models.c))
    next_run = make_target(sim, api_client, namespace, serving_runtime="custom", serving_image=STEP_IMAGE)
    next_run.deploy_canary(models.c, models.uri(models.c), 10)
    next_run.wait_ready(models.c, 2 * READY_TIMEOUT_S)
    assert next_run.probe(models.c, models.images, models.labels, batch=32).accuracy < 0.3
    next_run.rollback(models.c)

    _assert_production_restored(sim, namespace, models, models.b)
    assert served_versions(sim, namespace, models) == {models.b: 10}


@pytest.mark.parametrize("runtime", ["tensorflow", "custom"])
def test_the_inference_service_of_either_runtime_passes_fashion_pipeline_lint(
    runtime: str, models: Models, tmp_path: Path
) -> None:
    from kserve_sim import SCHEMAS

    from workflows.cli import main

    target = KServeTarget("fashion", serving_runtime=runtime, serving_image=STEP_IMAGE)
    manifest = target.manifest(models.a, models.uri(models.a), 10)
    good, bad = tmp_path / "isvc.yaml", tmp_path / "bad.yaml"
    good.write_text(json.dumps(manifest))
    manifest["spec"]["predictor"]["canaryTrafficPercnt"] = 10
    bad.write_text(json.dumps(manifest))

    assert main(["lint", str(good), "--schemas", str(SCHEMAS)]) == 0
    assert main(["lint", str(bad), "--schemas", str(SCHEMAS)]) == 1


def test_an_unknown_serving_runtime_is_a_clear_error() -> None:
    with pytest.raises(KServeError, match=r"unknown serving runtime 'arm64': choose one of tensorflow, custom"):
        KServeTarget("fashion", serving_runtime="arm64")


def test_a_first_rollout_waits_as_long_as_knatives_progress_deadline_for_cold_images(
    sim: KServeSim, api_client: Any, models: Models, namespace: str, tmp_path: Path
) -> None:
    from steps.rollout import RolloutPolicy, rollout
    from steps.targets import FIRST_READY_TIMEOUT_S

    sim.direct_urls(namespace)
    kserve = KServeTarget(namespace, api_client=api_client, poll_s=0.05, promote_timeout_s=30)
    assert kserve.live_version() is None  # nothing deployed yet
    policy = RolloutPolicy(canary_percent=10, holdout=HOLDOUT)

    record = rollout(models.registry, models.a, models.dataset_uri, kserve, policy, "first", tmp_path)

    assert record["outcome"] == "promoted" and kserve.live_version() == models.a
    assert {c["name"]: c["threshold"] for c in record["checks"]}["ready"] == FIRST_READY_TIMEOUT_S == 600


def test_the_logger_brings_each_revisions_traffic_to_the_log_sink_under_its_version(
    sim: KServeSim, api_client: Any, models: Models, namespace: str, tmp_path: Path
) -> None:
    """KServe's agent (as the simulator follows it) posts CloudEvents to a real `log-sink`, which writes records."""
    from conftest import CLI

    from steps.monitoring import read_window

    store = open_store(str(tmp_path / "log-store"))  # its own store: only this test's traffic
    port = free_port()
    sink = subprocess.Popen(
        [CLI, "--store", store.uri, "log-sink", "--port", str(port), "--batch", "5"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        started = time.time()
        target = make_target(sim, api_client, namespace, inference_log_url=f"http://127.0.0.1:{port}/")
        deploy_and_promote(target, models, models.a)
        target.deploy_canary(models.b, models.uri(models.b), 50)
        target.wait_ready(models.b, READY_TIMEOUT_S)
        served = served_versions(sim, namespace, models, 30)
        deadline = time.monotonic() + 30
        while sum(r.logged for r in sim.revisions(namespace, NAME)) < 2 * 30 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        sink.terminate()
        sink.wait(timeout=60)

    assert sink.returncode == 0
    assert set(served) == {models.a, models.b}
    for version, count in served.items():
        window = read_window(store, "fashion-mnist", version, started - 1, time.time() + 1)
        assert len(window.records) == count and window.skipped == []  # one image each, paired request/response
        assert {r["role"] for r in window.records} == {"served"}


def test_a_logger_without_a_mode_is_refused_as_kserves_webhook_refuses_it(
    sim: KServeSim, api_client: Any, models: Models, namespace: str
) -> None:
    from kubernetes.client import CustomObjectsApi
    from kubernetes.client.exceptions import ApiException

    manifest = KServeTarget(namespace).manifest(models.a, models.uri(models.a))
    manifest["spec"]["predictor"]["logger"] = {"url": "http://sink/"}  # nothing defaults the mode
    with pytest.raises(ApiException) as refused:
        CustomObjectsApi(api_client).create_namespaced_custom_object(
            "serving.kserve.io", "v1beta1", namespace, "inferenceservices", manifest
        )
    assert refused.value.status == 400 and "invalid logger type" in str(refused.value.body)  # a webhook denial
