"""Every node in the built step image, as its pod runs on a cluster (`run --runtime podman`).

CI (.ci/run) builds the base and the step image before the suite; without them these tests fail in
CI and are skipped elsewhere. The store is a real S3 server (moto) on 127.0.0.1, reached from inside
the containers through the host network, as a pod reaches MinIO.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import CLI, FILE_NAMES, PROMOTED_PHASES, S3Server, dag_workflow

from workflows import templates
from workflows.engine import Engine
from workflows.engine.runtime import ContainerRuntime

BASE_IMAGE = "localhost/fashion-pipeline/python:3.11-bookworm"


def _image_present(image: str) -> bool:
    if not shutil.which("podman"):
        return False
    return subprocess.run(["podman", "image", "exists", image], capture_output=True).returncode == 0


def _require(image: str) -> None:
    if _image_present(image):
        return
    message = f"image {image} not built: run scripts/build-base-image.sh and scripts/build-image.sh (see .ci/run)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def step_image() -> str:
    _require(templates.IMAGE)
    _require(templates.SLIM_IMAGE)
    return templates.IMAGE


def _image(image: str, field: str) -> str:
    return subprocess.run(
        ["podman", "image", "inspect", "--format", field, image], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_the_slim_image_is_the_same_code_user_and_labels_at_most_15_percent_of_the_full_one(step_image: str) -> None:
    full, slim = templates.IMAGE, templates.SLIM_IMAGE
    ratio = int(_image(slim, "{{.Size}}")) / int(_image(full, "{{.Size}}"))

    assert ratio <= 0.15, f"slim image is {ratio:.1%} of the full one"
    assert _image(slim, "{{.Config.User}}") == _image(full, "{{.Config.User}}") == "10001:10001"
    labels = {image: json.loads(_image(image, "{{json .Config.Labels}}")) for image in (full, slim)}
    assert labels[slim].pop("io.fashion-pipeline.flavor") == "slim"
    assert labels[full].pop("io.fashion-pipeline.flavor") == "full"
    assert labels[slim] == labels[full]
    env = {image: _image(image, "{{json .Config.Env}}") for image in (full, slim)}
    assert env[slim] == env[full]  # the same code version, paths and settings
    # No TensorFlow in it: a step that imported it would fail there, as the pipeline test would show.
    probe = subprocess.run(
        ["podman", "run", "--rm", slim, "python", "-c", "import importlib.util as u; print(u.find_spec('tensorflow'))"],
        capture_output=True,
        text=True,
    )
    assert probe.stdout.strip() == "None", probe.stderr


def _probe_workflow(code: str, outputs: list[str], **pod: Any) -> dict[str, Any]:
    container = {
        "image": templates.IMAGE,
        "command": ["python", "-c", code],
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        "resources": {"limits": {"cpu": "1", "memory": "512Mi"}},
        "env": [
            {"name": "GREETING", "value": "{{workflow.name}}"},
            {"name": "CPUS", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
            {
                "name": "AWS_ACCESS_KEY_ID",
                "valueFrom": {"secretKeyRef": {"name": "fashion-pipeline-s3", "key": "AWS_ACCESS_KEY_ID"}},
            },
        ],
    }
    probe = {
        "name": "probe",
        "container": container,
        "outputs": {"parameters": [{"name": n, "valueFrom": {"path": f"/tmp/outputs/{n}"}} for n in outputs]},
    }
    return dag_workflow("probe-", [{"name": "probe", "template": "probe"}], probe, securityContext=pod)


FACTS = """
import json, os
status = dict(line.split(':\\t', 1) for line in open('/proc/self/status').read().splitlines() if ':\\t' in line)
facts = {
    'uid': os.getuid(), 'gid': os.getgid(), 'groups': sorted(os.getgroups()),
    'cap_eff': status['CapEff'].strip(), 'no_new_privs': status['NoNewPrivs'].strip(),
    'greeting': os.environ['GREETING'], 'cpus': os.environ['CPUS'], 'key': os.environ['AWS_ACCESS_KEY_ID'],
    'progress_file': os.environ['ARGO_PROGRESS_FILE'],
}
os.makedirs('/tmp/outputs', exist_ok=True)
open('/tmp/outputs/facts', 'w').write(json.dumps(facts))
"""


def test_a_node_runs_with_its_pods_user_capabilities_env_and_limits(step_image: str, tmp_path: Path) -> None:
    manifest = _probe_workflow(FACTS, ["facts"], runAsNonRoot=True, runAsUser=10001, runAsGroup=10001, fsGroup=10001)
    runtime = ContainerRuntime("podman", secrets={"AWS_ACCESS_KEY_ID": "from-the-secret"})
    result = Engine(manifest, tmp_path / "runs", runtime=runtime).execute()
    assert result.phase == "Succeeded", result.nodes["probe"].message
    facts = json.loads(result.nodes["probe"].outputs["facts"])
    assert (facts["uid"], facts["gid"]) == (10001, 10001)
    assert 10001 in facts["groups"]
    assert facts["cap_eff"] == "0000000000000000" and facts["no_new_privs"] == "1"
    assert facts["greeting"] == result.name and facts["cpus"] == "1" and facts["key"] == "from-the-secret"
    assert facts["progress_file"] == "/var/run/argo/progress"
    assert "spec.securityContext" not in " ".join(result.ignored)


def test_an_image_that_runs_as_root_is_refused_as_the_kubelet_refuses_it(tmp_path: Path) -> None:
    _require(BASE_IMAGE)  # the Debian base has no USER: it runs as root
    manifest = _probe_workflow("pass", [], runAsNonRoot=True)
    runtime = ContainerRuntime("podman", image=BASE_IMAGE, secrets={"AWS_ACCESS_KEY_ID": "x"})
    result = Engine(manifest, tmp_path / "runs", runtime=runtime).execute()
    node = result.nodes["probe"]
    assert node.phase == "Error" and result.phase == "Failed"
    assert node.message.startswith("container has runAsNonRoot and image will run as root")


def test_an_output_the_step_does_not_write_fails_the_node_with_argos_message(step_image: str, tmp_path: Path) -> None:
    manifest = _probe_workflow("pass", ["never_written"], runAsNonRoot=True, runAsUser=10001)
    runtime = ContainerRuntime("podman", secrets={"AWS_ACCESS_KEY_ID": "x"})
    result = Engine(manifest, tmp_path / "runs", runtime=runtime).execute()
    node = result.nodes["probe"]
    assert node.phase == "Error"
    assert node.message == "open /var/run/argo/outputs/parameters/tmp/outputs/never_written: no such file or directory"


def test_a_missing_secret_is_a_clear_error_unless_the_store_needs_none(step_image: str, tmp_path: Path) -> None:
    manifest = _probe_workflow("pass", [], runAsNonRoot=True, runAsUser=10001)
    result = Engine(manifest, tmp_path / "runs", runtime=ContainerRuntime("podman", secrets={})).execute()
    assert result.nodes["probe"].phase == "Error"
    assert "AWS_ACCESS_KEY_ID" in result.nodes["probe"].message and "export it" in result.nodes["probe"].message
    with_file_store = ContainerRuntime("podman", file_store=tmp_path / "store", secrets={})
    result = Engine(_probe_workflow("pass", [], runAsUser=10001), tmp_path / "runs2", runtime=with_file_store).execute()
    assert result.phase == "Succeeded", result.nodes["probe"].message


def test_a_file_store_is_mounted_at_its_path_and_given_to_the_pods_fs_group(step_image: str, tmp_path: Path) -> None:
    store = tmp_path / "store"
    (store / "datasets").mkdir(parents=True)
    code = f"open({str(store / 'datasets' / 'written-by-the-pod')!r}, 'w').write('ok')"
    manifest = _probe_workflow(code, [], runAsNonRoot=True, runAsUser=10001, runAsGroup=10001, fsGroup=10001)
    runtime = ContainerRuntime("podman", file_store=store, secrets={"AWS_ACCESS_KEY_ID": "x"})
    result = Engine(manifest, tmp_path / "runs", runtime=runtime).execute()
    assert result.phase == "Succeeded", result.nodes["probe"].message
    written = store / "datasets" / "written-by-the-pod"
    assert written.read_text() == "ok" and written.stat().st_uid == 10001 and written.stat().st_gid == 10001


# -- the quick pipeline, twice, every node in the step image ------------------------------------------
def _upload_mirror(s3: S3Server, bucket: str, source: Path) -> str:
    from minio import Minio

    client = Minio(s3.endpoint.removeprefix("http://"), s3.access_key, s3.secret_key, secure=False)
    for name in FILE_NAMES.values():
        client.fput_object(bucket, f"mirror/{name}", str(source / name))
    return f"s3://{bucket}/mirror"


def _pipeline(
    tmp_path: Path, s3: S3Server, bucket: str, mirror: str, name: str, *more: str
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **s3.env(), "FASHION_PIPELINE_STORE": f"s3://{bucket}/store", "TERM": "dumb"}
    quick = [
        *("-p", f"data_url={mirror}", "-p", "train_limit=3000", "-p", "epochs=1", "-p", "seed=7"),
        *("-p", "min_accuracy=0.5", "-p", "min_class_recall=0.0", *more),
    ]
    return subprocess.run(
        [CLI, "run", "--runtime", "podman", "--runs-dir", str(tmp_path / "runs"), "--name", name, *quick],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=tmp_path,
    )


def _record(tmp_path: Path, name: str) -> dict[str, Any]:
    return json.loads((tmp_path / "runs" / name / "workflow.json").read_text())


@pytest.mark.slow
def test_the_quick_pipeline_runs_twice_in_the_image_promotes_then_rejects(
    step_image: str, tmp_path: Path, s3_server: S3Server, real_mirror: Path
) -> None:
    from minio import Minio

    bucket = "containers"
    s3_server.make_bucket(bucket)
    mirror = _upload_mirror(s3_server, bucket, real_mirror)

    first = _pipeline(tmp_path, s3_server, bucket, mirror, "ctr-first")
    record = _record(tmp_path, "ctr-first")
    nodes = {n["name"]: n for n in record["nodes"]}
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert record["phase"] == "Succeeded"
    assert {n: nodes[n]["phase"] for n in nodes} == PROMOTED_PHASES
    # Each node in its template's image: the steps that import no TensorFlow in the slim one.
    assert {n: nodes[n]["image"] for n in nodes} == {
        **{n: templates.SLIM_IMAGE for n in ("fetch-dataset", "gate", "onExit")},
        **{n: templates.IMAGE for n in ("train", "evaluate", "rollout")},
    }
    out = {n: nodes[n]["outputs"]["parameters"] for n in nodes}
    assert out["fetch-dataset"]["dataset_uri"].startswith(f"s3://{bucket}/store/datasets/fashion-mnist/")
    version = out["train"]["model_version"]
    assert out["evaluate"]["champion_version"] == ""
    assert out["gate"] == {"decision": "promote", "model_version": version}
    # No model server runs beside this test: the version is preflighted and promoted in the registry only.
    assert out["rollout"] == {"outcome": "promoted", "served_version": ""}
    assert {"metrics", "confusion-matrix"} <= set(nodes["evaluate"]["outputs"]["artifacts"])

    client = Minio(s3_server.endpoint.removeprefix("http://"), s3_server.access_key, s3_server.secret_key, secure=False)
    alias = json.loads(client.get_object(bucket, "store/models/fashion-mnist/aliases/production.json").read())
    assert alias["version"] == version

    summary = Path(nodes["onExit"]["outputs"]["artifacts"]["summary"]).read_text()
    assert summary.startswith("# ctr-first: Succeeded") and "## Failures" not in summary
    assert f"Production: {version}" in summary

    # The same recipe again: two threads in bfloat16 do not train bit for bit alike, and one epoch on 3,000
    # images can land a couple of points apart, which McNemar may call significant. An improvement of 20
    # points is out of reach, so the champion comparison rejects it whatever the two models score.
    second = _pipeline(tmp_path, s3_server, bucket, mirror, "ctr-second", "-p", "min_delta=0.2")
    record = _record(tmp_path, "ctr-second")
    nodes = {n["name"]: n for n in record["nodes"]}
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert nodes["fetch-dataset"]["outputs"]["parameters"]["cache_hit"] == "true"
    # Evaluated against production (the champion path: scipy's exact McNemar test) and rejected.
    assert nodes["evaluate"]["outputs"]["parameters"]["champion_version"] == version
    assert nodes["gate"]["outputs"]["parameters"]["decision"] == "reject"
    decision = json.loads(Path(nodes["gate"]["outputs"]["artifacts"]["decision"]).read_text())
    failed = {c["name"] for c in decision["checks"] if not c["passed"]}
    assert "min_delta" in failed and failed <= {"min_delta", "significance"}, decision["checks"]
    assert nodes["rollout"]["phase"] == "Skipped"
    assert nodes["rollout"]["outputs"]["parameters"] == {"outcome": "skipped", "served_version": ""}
    alias = json.loads(client.get_object(bucket, "store/models/fashion-mnist/aliases/production.json").read())
    assert alias["version"] == version
    summary = Path(nodes["onExit"]["outputs"]["artifacts"]["summary"]).read_text()
    assert "**reject**" in summary and f"Production: {version}" in summary


# -- crashes: what a killed engine leaves in the container engine ---------------------------------------
def _containers_of(run: str) -> list[str]:
    listed = subprocess.run(
        ["podman", "ps", "--all", "--filter", f"label=fashion-pipeline.run={run}", "--format", "{{.Names}}"],
        capture_output=True,
        text=True,
    )
    return listed.stdout.split()


def _sleeper(tmp_path: Path, image: str, seconds: int) -> Path:
    manifest = _probe_workflow(f"import time; time.sleep({seconds})", [], runAsNonRoot=True, runAsUser=10001)
    manifest["spec"]["templates"][1]["container"]["image"] = image
    path = tmp_path / "sleeper.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def test_a_sigkilled_engine_leaves_no_container_and_one_left_earlier_is_removed_at_the_next_start(
    step_image: str, tmp_path: Path
) -> None:
    from steps.lifeline import Owner

    env = {**os.environ, "AWS_ACCESS_KEY_ID": "x", "FASHION_PIPELINE_STORE": str(tmp_path / "store")}
    argv = [CLI, "run", "--runtime", "podman", "--file", str(_sleeper(tmp_path, step_image, 600)), "--name", "nap"]
    engine = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not _containers_of("nap") and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _containers_of("nap"), "the node's container never started"
    finally:
        engine.kill()
        engine.wait()
    deadline = time.monotonic() + 60
    while _containers_of("nap") and time.monotonic() < deadline:
        time.sleep(0.5)
    left = _containers_of("nap")
    if left:
        subprocess.run(["podman", "rm", "--force", *left], capture_output=True)
    assert not left, f"left after the engine was killed: {left}"

    # A container an earlier crash left (its engine gone, its reaper too): removed at the next start.
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    dead = Owner.of(ended.pid)
    ended.wait()
    labels = [f"--label=fashion-pipeline.owner={dead}", "--label=fashion-pipeline.run=old-run"]
    subprocess.run(
        ["podman", "create", "--name", "left-behind", *labels, step_image, "python", "-c", "pass"],
        check=True,
        capture_output=True,
    )
    again = subprocess.run(
        [CLI, "run", "--runtime", "podman", "--file", str(_sleeper(tmp_path, step_image, 0)), "--name", "next"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    subprocess.run(["podman", "rm", "--force", "left-behind"], capture_output=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"removed container left-behind of run old-run, left by an engine that exited (pid {dead.pid})" in (
        again.stderr
    )
    assert not _containers_of("old-run") and not _containers_of("next")


def test_the_log_sink_runs_in_the_slim_image_as_its_deployment_runs_it(step_image: str, tmp_path: Path) -> None:
    """argo/monitoring.yaml runs `log-sink` in the slim image: it must start there and answer its probe."""
    import requests
    from conftest import free_port

    from workflows.triggers.drift import log_sink_manifests

    [deployment] = [d for d in log_sink_manifests() if d["kind"] == "Deployment"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == templates.SLIM_IMAGE
    port = free_port()
    args = [a if a != "8080" else str(port) for a in container["args"]]
    name = f"log-sink-{port}"
    run = ["podman", "run", "-d", "--rm", "--name", name, "--network", "host", "--user", "10001:10001"]
    env = ["-e", "FASHION_PIPELINE_STORE=/tmp/store"]
    subprocess.run([*run, *env, templates.SLIM_IMAGE, *container["command"], *args], check=True, capture_output=True)
    try:
        deadline, status = time.monotonic() + 60, None
        while time.monotonic() < deadline and status != 200:
            try:
                status = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code
            except requests.RequestException:
                time.sleep(0.3)
        logs = subprocess.run(["podman", "logs", name], capture_output=True, text=True).stdout
        assert status == 200, logs
    finally:
        subprocess.run(["podman", "rm", "--force", name], capture_output=True)
