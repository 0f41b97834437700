"""Rollout on the local target: a real model server, canary, probe, promote or roll back."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from conftest import CLI, ServerProcess, TrainedStore

from steps.registry import Registry
from steps.rollout import RolloutError, RolloutPolicy, rollout
from steps.storage import open_store
from steps.targets.local import LocalTarget

PREDICT = "/v1/models/fashion-mnist:predict"


@pytest.fixture
def registry(trained_store: TrainedStore) -> Registry:
    registry = Registry(open_store(trained_store.store_uri))
    registry.set_alias("production", trained_store.weak, "rollout tests start from the weak model", actor="test")
    registry.set_alias("canary", None, "rollout tests start without canary", actor="test")
    return registry


@pytest.fixture(scope="module")
def server(trained_store: TrainedStore) -> Iterator[ServerProcess]:
    Registry(open_store(trained_store.store_uri)).set_alias("production", trained_store.weak, "start", actor="test")
    process = ServerProcess(trained_store.store_uri, poll=0.2)
    try:
        yield process
    finally:
        process.stop()


def served(server: ServerProcess) -> str:
    response = requests.post(server.url + PREDICT, json={"instances": [[[0] * 28] * 28]}, timeout=10)
    return response.headers["X-Model-Version"]


def test_canary_passes_its_probe_and_is_promoted(
    server: ServerProcess, registry: Registry, trained_store: TrainedStore, tmp_path: Path
) -> None:
    target = LocalTarget(registry, server.url, poll_s=0.1)
    target._wait_for("production", trained_store.weak, 30)
    record = rollout(
        registry,
        trained_store.good,
        trained_store.dataset_uri,
        target,
        RolloutPolicy(canary_percent=20, ready_timeout_s=60),
        "better model",
        tmp_path,
    )
    assert record["outcome"] == "promoted" and record["live_champion"] == trained_store.weak
    assert {c["name"]: c["passed"] for c in record["checks"]} == {
        "ready": True,
        "error_rate": True,
        "accuracy": True,
        "p95_latency_ms": True,
        "served_by_candidate": True,
    }
    assert record["probe"]["versions"] == {trained_store.good: record["probe"]["requests"]}
    assert registry.alias("production")["version"] == trained_store.good  # type: ignore[index]
    assert registry.alias("canary") is None
    assert all(served(server) == trained_store.good for _ in range(20))  # 100% on the new model
    assert json.loads((tmp_path / "rollout.json").read_text())["outcome"] == "promoted"


@pytest.mark.parametrize(
    ("policy", "failed_check"),
    [
        (RolloutPolicy(p95_budget_ms=0.001), "p95_latency_ms"),
        (RolloutPolicy(accuracy_slack=-0.5), "accuracy"),
    ],
)
def test_a_canary_failing_its_probe_is_rolled_back(
    server: ServerProcess,
    registry: Registry,
    trained_store: TrainedStore,
    tmp_path: Path,
    policy: RolloutPolicy,
    failed_check: str,
) -> None:
    LocalTarget(registry, server.url)._wait_for("production", trained_store.weak, 30)
    with pytest.raises(RolloutError, match=f"rolled back {trained_store.good} on local: the canary failed its probe"):
        rollout(
            registry,
            trained_store.good,
            trained_store.dataset_uri,
            LocalTarget(registry, server.url),
            policy,
            "must not ship",
            tmp_path,
        )
    record = json.loads((tmp_path / "rollout.json").read_text())
    assert record["outcome"] == "rolled-back"
    assert [c["name"] for c in record["checks"] if not c["passed"]] == [failed_check]
    assert registry.alias("production")["version"] == trained_store.weak  # type: ignore[index]
    assert registry.alias("canary") is None
    LocalTarget(registry, server.url)._wait_for("canary", trained_store.weak, 30)  # canary gone: production answers
    assert all(served(server) == trained_store.weak for _ in range(20))


def test_a_canary_that_never_becomes_ready_is_rolled_back(
    registry: Registry, trained_store: TrainedStore, tmp_path: Path
) -> None:
    slow = ServerProcess(trained_store.store_uri, poll=60)  # this server will not notice the canary in time
    try:
        with pytest.raises(RolloutError, match="the canary did not become ready"):
            rollout(
                registry,
                trained_store.good,
                trained_store.dataset_uri,
                LocalTarget(registry, slow.url),
                RolloutPolicy(ready_timeout_s=2),
                "too slow",
                tmp_path,
            )
        assert registry.alias("production")["version"] == trained_store.weak  # type: ignore[index]
        assert registry.alias("canary") is None
        assert served(slow) == trained_store.weak
    finally:
        slow.stop()


def test_without_a_server_the_version_is_preflighted_and_promoted_in_the_registry(
    registry: Registry, trained_store: TrainedStore, tmp_path: Path
) -> None:
    record = rollout(
        registry, trained_store.good, trained_store.dataset_uri, None, RolloutPolicy(), "no server", tmp_path
    )
    assert record["outcome"] == "promoted" and record["target"] == "registry"
    assert record["preflight"]["passed"] and record["preflight"]["sample_accuracy"] > 0.8
    assert registry.alias("production")["version"] == trained_store.good  # type: ignore[index]


def test_preflight_refuses_a_model_that_cannot_serve(
    registry: Registry, trained_store: TrainedStore, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    (broken / "variables").mkdir(parents=True)
    (broken / "saved_model.pb").write_bytes(b"garbage")
    version = registry.publish(broken, {})
    with pytest.raises(RolloutError, match=r"preflight: the candidate at .* cannot serve"):
        rollout(registry, version, trained_store.dataset_uri, None, RolloutPolicy(), "broken", tmp_path / "out")
    assert registry.alias("production")["version"] == trained_store.weak  # type: ignore[index]


def test_pipeline_run_ends_with_the_new_model_served_by_the_running_server(
    server: ServerProcess, registry: Registry, trained_store: TrainedStore, tmp_path: Path
) -> None:
    LocalTarget(registry, server.url)._wait_for("production", trained_store.weak, 30)
    env = {**os.environ, "FASHION_PIPELINE_STORE": trained_store.store_uri, "FASHION_PIPELINE_SERVER_URL": server.url}
    params = ["train_limit=3000", "epochs=1", "min_accuracy=0", "min_class_recall=0", "allow_equal=true", "tolerance=1"]
    proc = subprocess.run(
        [CLI, "run", "--name", "served-run", *[a for p in params for a in ("-p", p)]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads((tmp_path / "runs" / "served-run" / "workflow.json").read_text())
    new_version = run["outputs"]["parameters"]["model_version"]
    assert run["outputs"]["parameters"]["rollout_outcome"] == "promoted"
    assert run["outputs"]["parameters"]["served_version"] == new_version
    assert served(server) == new_version
    rollout_log = Path(next(n for n in run["nodes"] if n["name"] == "rollout")["log"]).read_text()
    assert "deploying" in rollout_log and "as a canary" in rollout_log
