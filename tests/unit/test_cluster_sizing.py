"""Pods sized for the smallest cluster we document, checked up front by cluster-up.sh; TF threads from limits.cpu."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from steps.hardware import CPU_LIMIT_ENV
from steps.targets.kserve import DEFAULT_RESOURCES
from workflows import templates

CLUSTER_UP = REPO / "scripts" / "cluster-up.sh"
ARGO = REPO / "argo"
# What the upstream components request on a kind/minikube node (millicores, MiB), from their release
# manifests and the distributions' defaults: kube-system (apiserver 250m, controller-manager 200m,
# scheduler 100m, etcd 100m/100Mi, coredns 2x 100m/70Mi, kindnet 100m/50Mi), Knative Serving core
# (activator 300m/60Mi, autoscaler, controller, webhook 100m/100Mi each), Kourier (gateway and
# controller), KServe's controller (100m/300Mi), cert-manager, Argo Workflows and Argo Events
# (controllers, server, a 3-replica JetStream EventBus), rounded up.
UPSTREAM_CPU_MILLI = 2600
UPSTREAM_MEMORY_MI = 4096
QUEUE_PROXY = (25, 50)  # Knative's queue-proxy sidecar in every predictor pod (cpu m, memory Mi)


def _pins() -> dict[str, int]:
    return {
        k: int(v)
        for k, v in re.findall(r"^(MIN_CPUS|MIN_MEMORY_GIB|KUBERNETES_MIN_MINOR)=(\d+)", CLUSTER_UP.read_text(), re.M)
    }


def _milli(cpu: str) -> int:
    return int(cpu[:-1]) if cpu.endswith("m") else int(float(cpu) * 1000)


def _mi(memory: str) -> int:
    return int(memory[:-2]) * 1024 if memory.endswith("Gi") else int(memory[:-2])


def _requests(resources: dict[str, dict[str, str]]) -> tuple[int, int]:
    return _milli(resources["requests"]["cpu"]), _mi(resources["requests"]["memory"])


def _workload(kind: str, name: str) -> tuple[int, int]:
    for path in sorted(ARGO.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == kind and doc["metadata"]["name"] == name:
                return _requests(doc["spec"]["template"]["spec"]["containers"][0]["resources"])
    raise AssertionError(f"no {kind} {name} in argo/")


def test_the_pipelines_peak_requests_fit_the_documented_minimum_cluster() -> None:
    template = yaml.safe_load((ARGO / "workflow-template.yaml").read_text())
    steps = {
        t["name"]: _requests(t["container"]["resources"]) for t in template["spec"]["templates"] if "container" in t
    }
    predictor = tuple(a + b for a, b in zip(_requests(DEFAULT_RESOURCES), QUEUE_PROXY, strict=True))
    minio = _workload("Deployment", "minio")
    pins = _pins()

    # One step runs at a time; during a rollout three predictor revisions may run (production, canary,
    # and the restored production after a rollback).
    peak = max(tuple(a + b + c for a, b, c in zip(steps[name], predictor, minio, strict=True)) for name in steps)
    rollout = tuple(a + 3 * b + c for a, b, c in zip(steps["rollout"], predictor, minio, strict=True))
    need_cpu = UPSTREAM_CPU_MILLI + max(peak[0], rollout[0])
    need_mi = UPSTREAM_MEMORY_MI + max(peak[1], rollout[1])

    assert need_cpu <= pins["MIN_CPUS"] * 1000, need_cpu
    assert need_mi <= pins["MIN_MEMORY_GIB"] * 1024, need_mi
    # A default 2-CPU minikube with everything installed could not run train before: requests of 2 CPUs.
    assert steps["train"][0] <= 1000 and steps["evaluate"][0] <= 1000


def test_training_gets_its_cpu_limit_through_the_downward_api_and_may_use_more_than_it_requests() -> None:
    template = yaml.safe_load((ARGO / "workflow-template.yaml").read_text())
    train = next(t for t in template["spec"]["templates"] if t["name"] == "train")["container"]
    env = {e["name"]: e for e in train["env"]}

    assert env[CPU_LIMIT_ENV]["valueFrom"] == {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1"}}
    assert _milli(train["resources"]["limits"]["cpu"]) > _milli(train["resources"]["requests"]["cpu"])


def test_train_sizes_tensorflows_thread_pools_from_the_cpu_limit(tmp_path: Path, drop: Path) -> None:
    cli = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin" / "fashion-pipeline"
    cli = cli if cli.exists() else REPO / ".venv" / "bin" / "fashion-pipeline"
    store = tmp_path / "store"
    env = {**os.environ, CPU_LIMIT_ENV: "1", "FASHION_PIPELINE_STORE": str(store)}
    env.pop("FASHION_MNIST_MIRROR", None)
    fetched = subprocess.run(
        [str(cli), "fetch", "--data-url", str(drop), "--out", str(tmp_path / "f")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert fetched.returncode == 0, fetched.stderr
    dataset = (tmp_path / "f" / "dataset_uri").read_text()

    trained = subprocess.run(
        [
            str(cli),
            "train",
            "--dataset",
            dataset,
            "--epochs",
            "1",
            "--batch-size",
            "32",
            "--architecture",
            "small-cnn",
            "--out",
            str(tmp_path / "t"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )

    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "TensorFlow thread pools: 1 intra-op, 1 inter-op" in trained.stderr
    version = (tmp_path / "t" / "model_version").read_text()
    card = json.loads((store / "models" / "fashion-mnist" / "versions" / version / "model-card.json").read_text())
    assert card["training"]["threads"] == 1


# -- cluster-up.sh checks the cluster before installing anything ---------------------------------

FAKE_KUBECTL = """#!/usr/bin/env bash
case "$*" in
  "config current-context") echo kind-test ;;
  "cluster-info") ;;
  "version -o json") printf '%s' "$FAKE_VERSION" ;;
  "get nodes -o json") printf '%s' "$FAKE_NODES" ;;
  *) echo "$*" >>"$FAKE_LOG"; exit 3 ;;
esac
"""


# A cluster that takes every upstream install step, and whose KServe webhook refuses the first
# FAKE_REFUSALS applies of kserve-cluster-resources.yaml; it stops the script where this repository's
# own manifests begin, unless FAKE_WHOLE is set. Its nodes hold the images listed in the file FAKE_IMAGES.
INSTALLING_KUBECTL = """#!/usr/bin/env bash
echo "$*" >>"$FAKE_LOG"
case "$*" in
  "config current-context") echo kind-test ;;
  "version -o json") printf '%s' "$FAKE_VERSION" ;;
  "get nodes -o json") printf '%s' "$FAKE_NODES" ;;
  "get nodes -o jsonpath="*) cat "${FAKE_IMAGES:-/dev/null}" 2>/dev/null ;;
  *"get endpointslices"*) echo 10.244.0.9 ;;
  *"get pods -l eventsource-name=fashion-drops"*) echo true ;;
  *"get configmap inferenceservice-config -o json"*) echo '{"data":{}}' ;;
  *kserve-cluster-resources.yaml*)
    n=$(cat "$FAKE_LOG.refused" 2>/dev/null || echo 0)
    if ((n < FAKE_REFUSALS)); then
      echo $((n + 1)) >"$FAKE_LOG.refused"
      echo 'failed calling webhook: connect: connection refused' >&2
      exit 1
    fi ;;
  *argo/namespace.yaml*) [[ -n "${FAKE_WHOLE:-}" ]] || exit 3 ;;
  *"-f -"* | *"--patch-file /dev/stdin"*) cat >/dev/null ;;
esac
exit 0
"""


def _cluster_up(
    tmp_path: Path, minor: str, nodes: list[dict[str, str]], fake: str = FAKE_KUBECTL, **env_extra: str
) -> tuple[subprocess.CompletedProcess[str], str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    kubectl = bin_dir / "kubectl"
    kubectl.write_text(fake)
    kubectl.chmod(0o755)
    log = tmp_path / "kubectl.log"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "FAKE_VERSION": json.dumps({"serverVersion": {"major": "1", "minor": minor}}),
        "FAKE_NODES": json.dumps({"items": [{"status": {"allocatable": node}} for node in nodes]}),
        "FAKE_LOG": str(log),
        "FASHION_PIPELINE_STATE_DIR": str(tmp_path / "state"),
        **env_extra,
    }
    result = subprocess.run(["bash", str(CLUSTER_UP)], capture_output=True, text=True, env=env, timeout=60)
    return result, log.read_text() if log.exists() else ""


def _needs_jq() -> None:
    import shutil

    if shutil.which("jq") is None or shutil.which("openssl") is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs jq and openssl")
        pytest.skip("jq or openssl is not installed")


@pytest.mark.parametrize(
    ("minor", "nodes", "expected"),
    [
        ("32", [{"cpu": "8", "memory": "32Gi"}], r"Kubernetes 1\.32 is too old: Knative Serving 1\.21 needs 1\.33"),
        (
            "33+",
            [{"cpu": "2", "memory": "8025424Ki"}],
            r"the cluster has 2\.0 CPUs and 7 GiB allocatable; .* at least 6 CPUs and 12 GiB",
        ),
        (
            "34",
            [{"cpu": "3900m", "memory": "6Gi"}, {"cpu": "2", "memory": "8Gi"}],
            r"the cluster has 5\.9 CPUs and 14 GiB",
        ),
    ],
    ids=["old Kubernetes", "default minikube", "two nodes, too few CPUs"],
)
def test_cluster_up_refuses_a_cluster_that_cannot_run_the_pipeline_before_installing_anything(
    minor: str, nodes: list[dict[str, str]], expected: str, tmp_path: Path
) -> None:
    _needs_jq()
    result, calls = _cluster_up(tmp_path, minor, nodes)

    assert result.returncode == 1
    assert re.search(r"^cluster-up: " + expected, result.stderr, re.M), result.stderr
    assert calls == ""  # nothing applied


def test_cluster_up_goes_on_to_install_on_a_cluster_of_the_minimum_size(tmp_path: Path) -> None:
    _needs_jq()
    result, calls = _cluster_up(tmp_path, "33", [{"cpu": "6", "memory": "12Gi"}])

    assert "cluster: Kubernetes 1.33, 6 CPUs, 12 GiB allocatable" in result.stderr
    assert calls.startswith("apply --server-side")  # the first install step (the fake kubectl stops it)


def test_cluster_up_accepts_the_machine_it_advises_whose_allocatable_memory_is_a_little_less(tmp_path: Path) -> None:
    _needs_jq()
    result, calls = _cluster_up(tmp_path, "33", [{"cpu": "6", "memory": "12010360Ki"}])  # minikube --memory 12g

    assert "cluster: Kubernetes 1.33, 6 CPUs, 11 GiB allocatable" in result.stderr
    assert calls.startswith("apply --server-side")


def test_knative_skips_tag_resolution_for_the_registry_of_the_step_image(tmp_path: Path) -> None:
    _needs_jq()
    result, calls = _cluster_up(tmp_path, "33", [{"cpu": "6", "memory": "12Gi"}], INSTALLING_KUBECTL, FAKE_REFUSALS="0")

    assert result.returncode == 3, result.stderr  # stopped by the fake where argo/ begins
    patch = next(line for line in calls.splitlines() if "configmap/config-deployment" in line)
    skipped = json.loads(patch.split(" -p ", 1)[1])["data"]["registries-skipping-tag-resolving"].split(",")
    assert {"kind.local", "ko.local", "dev.local", "index.docker.io"} <= set(skipped)
    assert templates.IMAGE.startswith("docker.io/")  # the registry named above, normalised by Knative


@pytest.mark.parametrize(("refusals", "applied"), [(2, True), (3, False)], ids=["refused twice", "refused always"])
def test_kserve_cluster_resources_are_retried_while_kserves_webhook_refuses_them(
    refusals: int, applied: bool, tmp_path: Path
) -> None:
    _needs_jq()
    result, calls = _cluster_up(
        tmp_path,
        "33",
        [{"cpu": "6", "memory": "12Gi"}],
        INSTALLING_KUBECTL,
        FAKE_REFUSALS=str(refusals),
        RETRY_DELAY_S="0",
    )

    tries = [line for line in calls.splitlines() if "kserve-cluster-resources.yaml" in line]
    assert len(tries) == min(refusals + 1, 3)
    if applied:
        assert result.returncode == 3 and result.stderr.count("retrying in 5 s") == 2
    else:
        assert result.returncode == 1
        assert re.search(
            r"^cluster-up: could not apply .*kserve-cluster-resources.yaml \(3 tries\)", result.stderr, re.M
        )


# scripts/build-image.sh as the cluster sees it: the names it prints, and after a build the nodes hold them.
FAKE_BUILD = """#!/usr/bin/env bash
if [[ "${1:-}" == --print-image ]]; then printf '%s\\n' $FAKE_STEP_IMAGES; exit 0; fi
echo "BUILD-IMAGE $*" >>"$FAKE_LOG"
printf '%s ' $FAKE_STEP_IMAGES >"$FAKE_IMAGES"
"""


NODE_IMAGES = {
    "images to load": "kind-control-plane\tregistry.k8s.io/pause:3.10",
    "images held": f"kind-control-plane\tregistry.k8s.io/pause:3.10 {templates.IMAGE} {templates.SLIM_IMAGE}",
    # A node added since the images were loaded: the Forbid schedule could land its pods there.
    "one node lacks the slim image": (
        f"kind-control-plane\t{templates.IMAGE} {templates.SLIM_IMAGE} registry.k8s.io/pause:3.10\n"
        f"kind-worker\tregistry.k8s.io/pause:3.10 {templates.IMAGE}"
    ),
}


@pytest.mark.parametrize("nodes", list(NODE_IMAGES))
def test_cron_workflows_are_applied_only_once_every_node_holds_the_step_images(nodes: str, tmp_path: Path) -> None:
    _needs_jq()
    build = tmp_path / "build-image.sh"
    build.write_text(FAKE_BUILD)
    build.chmod(0o755)
    images = tmp_path / "node-images"
    images.write_text(NODE_IMAGES[nodes])
    held = nodes == "images held"
    result, calls = _cluster_up(
        tmp_path,
        "33",
        [{"cpu": "6", "memory": "12Gi"}],
        INSTALLING_KUBECTL,
        FAKE_REFUSALS="0",
        FAKE_WHOLE="1",
        FAKE_IMAGES=str(images),
        FAKE_STEP_IMAGES=f"{templates.IMAGE} {templates.SLIM_IMAGE}",
        BUILD_IMAGE=str(build),
        POLL_S="0",
    )

    assert result.returncode == 0, result.stderr
    lines = calls.splitlines()
    # Every file holding a CronWorkflow (and what else it holds runs in the step images too).
    cron_files = tuple(p.name for p in ARGO.glob("*.yaml") if re.search(r"^kind: CronWorkflow", p.read_text(), re.M))
    crons = [i for i, line in enumerate(lines) if line.endswith(cron_files)]
    others = [i for i, line in enumerate(lines) if line.startswith("apply -f") and "argo/" in line and i not in crons]
    assert {"cron-workflow.yaml", "drop-reconcile.yaml", "monitoring.yaml"} <= set(cron_files)
    assert len(crons) == len(cron_files) and max(others) < min(crons)
    builds = [i for i, line in enumerate(lines) if line.startswith("BUILD-IMAGE")]
    if held:
        assert builds == [] and "the nodes hold the step images" in result.stderr
    elif nodes == "images to load":
        assert len(builds) == 1 and builds[0] < min(crons)
        node = "on kind-control-plane"
        assert f"the nodes lack: {templates.IMAGE} {node}, {templates.SLIM_IMAGE} {node}\n" in result.stderr
    else:
        assert len(builds) == 1 and builds[0] < min(crons)
        assert f"the nodes lack: {templates.SLIM_IMAGE} on kind-worker\n" in result.stderr
