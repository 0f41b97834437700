"""Closing the loop on real served traffic: the server's inference log, `monitor`, and drift as a trigger.

A real model server (`serve --log-sample-rate 1`) answers the real test images, then the same images
inverted; `monitor` finds no drift in the first window and drift in the second; the drift trigger
starts exactly one retrain for the episode, whose lineage names the drift report. A server killed
while it writes leaves no torn record behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import CLI, ServerProcess, TrainedStore

from steps.dataset import load_dataset
from steps.monitoring import read_window
from steps.registry import MODEL_NAME, Registry
from steps.serving.client import ClientError, PredictionClient
from steps.storage import open_store
from workflows.engine import RunQueue, workflow_parameters
from workflows.pipeline import manifest
from workflows.triggers.drift import DriftWatcher

QUICK = {"train_limit": "1000", "epochs": "1", "architecture": "small-cnn", "precision": "float32"}
OPERATOR = {"min_accuracy": "0", "min_class_recall": "0"}


@pytest.fixture
def served(trained_store: TrainedStore, tmp_path: Path) -> Registry:
    """A copy of the trained store with the good model in production: this test's traffic is its own."""
    root = tmp_path / "store"
    shutil.copytree(trained_store.store_uri, root)
    registry = Registry(open_store(str(root)))
    registry.set_alias("production", trained_store.good, "monitoring test", actor="test")
    return registry


def monitor(registry: Registry, out: Path, end: float, window_s: float) -> subprocess.CompletedProcess[str]:
    argv = [CLI, "--store", registry.store.uri, "monitor", "--end", str(end), "--window", str(window_s)]
    return subprocess.run([*argv, "--out", str(out)], capture_output=True, text=True, timeout=300)


def test_served_test_images_do_not_drift_inverted_ones_do_and_one_episode_retrains_once(
    served: Registry, trained_store: TrainedStore, tmp_path: Path
) -> None:
    data = load_dataset(trained_store.dataset_uri)
    server = ServerProcess(served.store.uri, "--log-sample-rate", "1")
    try:
        client = PredictionClient(server.url, batch_size=50)
        started = time.time()
        client.predict(data.x_test[:2000].astype(np.float32))
        middle = time.time()
        time.sleep(1.2)
        second = time.time()
        client.predict(255 - data.x_test[2000:4000].astype(np.float32))
        ended = time.time() + 1
    finally:
        server.stop()  # the log's last batch is written as the server stops

    normal = monitor(served, tmp_path / "normal", end=middle + 0.01, window_s=middle + 0.01 - started + 1)
    assert normal.returncode == 0, normal.stderr
    assert "verdict     no drift: no measure crossed its threshold" in normal.stdout, normal.stdout
    assert "version     " + trained_store.good in normal.stdout
    assert json.loads((tmp_path / "normal" / "drift.json").read_text())["window"]["records"] == 2000
    assert (tmp_path / "normal" / "drift.png").stat().st_size > 10_000

    shifted_s = ended - second + 0.1  # the inverted stream only
    shifted = monitor(served, tmp_path / "shifted", end=ended, window_s=shifted_s)
    assert shifted.returncode == 0, shifted.stderr
    assert "verdict     DRIFTED: drift: " in shifted.stdout and "ks_mean" in shifted.stdout, shifted.stdout
    report = json.loads((tmp_path / "shifted" / "drift.json").read_text())
    assert report["window"]["records"] == 2000 and report["measures"]["ks_dark"]["drifted"]
    assert served.store.exists(report["report_uri"].removeprefix(served.store.uri_of("")).lstrip("/"))

    # Drift as a trigger: the same episode checked three times starts one run; its lineage names the report.
    defaults = {**workflow_parameters(manifest()), "store": served.store.uri, "rollout_target": "local", **QUICK}
    runs = RunQueue(manifest, tmp_path / "runs", defaults, OPERATOR, "fashion-pipeline up")
    watcher = DriftWatcher(served, runs)
    watcher.policy = type(watcher.policy)(window_s=shifted_s)
    try:
        first = watcher.check(end=ended)
        watcher.check(end=ended)
        watcher.check(end=ended + 0.001)
        run = f"drift-{first['window_id']}"
        status = _wait_finished(runs, run)
    finally:
        runs.close()

    assert sorted(p.name for p in (tmp_path / "runs").iterdir() if not p.name.startswith(".")) == [run]
    assert status["phase"] == "Succeeded", json.dumps(status)[-2000:]
    started_by = json.loads(status["parameters"]["trigger"])
    assert started_by["by"] == "drift" and started_by["report"] == first["report_uri"]
    assert status["parameters"]["reason"].startswith("drift: ")
    [lineage_key] = [k for k in served.store.list("datasets") if k.endswith(f"/lineage/{run}.json")]
    lineage = served.store.read_json(lineage_key)
    assert lineage["trigger"]["report"] == first["report_uri"] and lineage["trigger"]["by"] == "drift"


def _wait_finished(runs: RunQueue, name: str, timeout: float = 900) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = runs.status(name)
        if status is not None and status["phase"] not in ("Pending", "Running"):
            return status
        time.sleep(0.5)
    raise AssertionError(f"{name} did not finish")


def test_a_server_killed_while_it_logs_leaves_no_torn_record(served: Registry, trained_store: TrainedStore) -> None:
    data = load_dataset(trained_store.dataset_uri)
    # Small batches, written often: the kill lands among the writes.
    server = ServerProcess(served.store.uri, "--log-sample-rate", "1", "--log-batch", "20")
    client = PredictionClient(server.url, batch_size=10, retries=0)
    started = time.time()
    sent = []

    def traffic() -> None:  # until the server is gone
        try:
            for start in range(0, len(data.x_test), 10):
                client.predict(data.x_test[start : start + 10].astype(np.float32))
                sent.append(10)
        except ClientError:
            pass

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        time.sleep(3)  # a batch of 20 records is written every other request: the kill lands among writes
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(timeout=30)
        sender.join(timeout=60)
    finally:
        server.stop()

    window = read_window(served.store, MODEL_NAME, trained_store.good, started - 1, time.time() + 1)
    assert window.skipped == []  # every file whole, every line a record
    assert 0 < len(window.records) <= sum(sent) + 10
    assert all(r["version"] == trained_store.good for r in window.records)


class RecordedRuns:
    """The run queue as the webhook sees it: what was submitted (this test is about the event, not the run)."""

    def __init__(self) -> None:
        self.submitted: list[tuple[str, dict[str, str]]] = []

    def submit(self, name: str, parameters: dict[str, str], *args: Any) -> None:
        self.submitted.append((name, parameters))

    def status(self, name: str) -> dict[str, Any] | None:
        return {"name": name, "phase": "Pending"} if any(n == name for n, _ in self.submitted) else None


def test_the_clusters_drift_check_posts_one_retrain_per_episode_to_the_webhook(
    served: Registry, trained_store: TrainedStore, tmp_path: Path
) -> None:
    """`drift-check` (the CronWorkflow's step) speaks the webhook contract; `up`'s webhook receiver answers as the
    cluster's EventSource and Sensor would (one run per event id)."""
    from workflows.triggers.webhook import EventLog, WebhookServer

    data = load_dataset(trained_store.dataset_uri)
    server = ServerProcess(served.store.uri, "--log-sample-rate", "1")
    try:
        PredictionClient(server.url, batch_size=50).predict(255 - data.x_test[:400].astype(np.float32))
    finally:
        server.stop()
    runs = RecordedRuns()
    webhook = WebhookServer("127.0.0.1", 0, "s3cret", EventLog(served.store), runs)  # type: ignore[arg-type]
    webhook.start()
    try:
        url = f"http://127.0.0.1:{webhook.port}/retrain"
        env = {"FASHION_PIPELINE_WEBHOOK_TOKEN": "s3cret", "PATH": os.environ["PATH"], "HOME": str(tmp_path)}
        env |= {k: v for k, v in os.environ.items() if k.startswith(("FASHION_MNIST", "TF_"))}
        argv = [CLI, "--store", served.store.uri, "drift-check", "--webhook-url", url, "--out", str(tmp_path / "o")]
        checks = [subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env) for _ in range(2)]
        no_token = subprocess.run(
            argv, capture_output=True, text=True, timeout=300, env={**env, "FASHION_PIPELINE_WEBHOOK_TOKEN": ""}
        )
    finally:
        webhook.shutdown()

    assert [c.returncode for c in checks] == [0, 0], checks[0].stderr[-2000:]
    assert all(f"{trained_store.good}: DRIFTED: drift: " in c.stdout for c in checks)
    [(name, parameters)] = runs.submitted  # the second check found the episode open: no second event
    assert name.startswith("retrain-drift-") and parameters["reason"].startswith("drift ")
    reports = served.store.list(f"monitoring/fashion-mnist/{trained_store.good}/drift")
    assert any(parameters["reason"].endswith(f" report {key}") for key in reports)  # the run's lineage keeps it
    assert (tmp_path / "o" / "drift.json").is_file() and (tmp_path / "o" / "drift.png").is_file()
    assert no_token.returncode == 1 and "needs the webhook's token" in no_token.stderr
    assert "Traceback" not in no_token.stderr
