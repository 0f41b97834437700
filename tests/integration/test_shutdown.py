"""Stopping the long-running commands as a supervisor does: SIGTERM, with SIGINT ignored since start.

Real processes, real servers, a real pipeline stopped while it trains on real data. After each
stop: no process of the tree is left, the ports can be bound again, and the records say what
happened.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
from conftest import CLI, free_port, seed_production

TOKEN = "t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LONG_TRAINING = {"train_limit": 3000, "train_budget_s": 3000}  # far longer than any test waits for it

# Every test here trains (kills runs mid-training, stops `up` mid-run).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory, real_mirror: Path) -> Path:
    """A store with the real dataset and a small model in production."""
    root = tmp_path_factory.mktemp("seeded")
    env = {**os.environ, "FASHION_PIPELINE_STORE": str(root / "store")}
    seed_production(root, env, real_mirror, "seed for the shutdown tests")
    return root / "store"


def ignoring_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a supervisor, nohup or a background job starts us


def start(args: list[str], cwd: Path, store: Path, log: Path, stdout: Path | None = None) -> subprocess.Popen[bytes]:
    """The command with its log in `log` (stdout too, unless `stdout` names a file of its own)."""
    env = {**os.environ, "FASHION_PIPELINE_STORE": str(store), "FASHION_PIPELINE_WEBHOOK_TOKEN": TOKEN}
    with open(log, "wb") as err, open(stdout or os.devnull, "wb") as out:
        return subprocess.Popen(
            [CLI, *args],
            cwd=cwd,
            env=env,
            stdout=out if stdout else err,
            stderr=err,
            preexec_fn=ignoring_sigint,
        )


def wait_for(condition: Callable[[], Any], what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except (requests.RequestException, OSError, ValueError, KeyError):
            value = None
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def alive(processes: list[psutil.Process]) -> list[str]:
    left = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{process.pid} {' '.join(process.cmdline())}")
        except psutil.NoSuchProcess:
            continue
    return left


def commands(processes: list[psutil.Process]) -> list[str]:
    return [" ".join(p.cmdline()) for p in processes if p.is_running()]


def bindable(port: int) -> bool:
    """A new server could listen on the port (what a restart needs)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError:
            return False
    return True


def ready(port: int) -> bool:
    return requests.get(f"http://127.0.0.1:{port}/v2/models/fashion-mnist/ready", timeout=2).status_code == 200


def training(status: dict[str, Any]) -> bool:
    """The train node runs and has reported its first progress (the model is fitting)."""
    return any(n["name"] == "train" and n["phase"] == "Running" and n.get("progress") for n in status["nodes"])


def run_status(port: int, name: str) -> dict[str, Any]:
    return requests.get(f"http://127.0.0.1:{port}/runs/{name}", timeout=5).json()


def stop(process: subprocess.Popen[bytes], processes: list[psutil.Process], timeout: float = 300) -> int:
    """SIGTERM, as a supervisor; whatever is still there after `timeout` is killed (and the test fails)."""
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=timeout)
    finally:
        cleanup(processes)


def cleanup(processes: list[psutil.Process]) -> None:
    """Tests stop every process they start, whatever happened."""
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            continue


def test_sigterm_stops_up_and_its_whole_tree_while_a_webhook_retrain_trains(seeded: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(seeded, store)
    server_port, webhook_port = free_port(), free_port()
    log = tmp_path / "up.log"
    up = start(["up", "--port", str(server_port), "--webhook-port", str(webhook_port)], tmp_path, store, log)
    processes = [psutil.Process(up.pid)]
    try:
        wait_for(lambda: ready(server_port), "the model server", timeout=300)
        webhook = f"http://127.0.0.1:{webhook_port}/retrain"
        events: list[dict[str, Any]] = [{"event_id": "long", **LONG_TRAINING}, {"event_id": "later", "epochs": 1}]
        for event in events:
            assert requests.post(webhook, json=event, headers=AUTH, timeout=10).status_code == 202
        wait_for(lambda: training(run_status(webhook_port, "retrain-long")), "training to start", timeout=600)
        processes = tree(up.pid)
        running = commands(processes)
        assert any(" serve " in c for c in running) and any(" train " in c for c in running), running
        code = stop(up, processes)
    finally:
        cleanup(processes)
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert wait_for(lambda: not alive(processes), "the tree to be gone", timeout=30), alive(processes)
    assert wait_for(lambda: bindable(server_port) and bindable(webhook_port), "both ports", timeout=30)
    record = json.loads((tmp_path / "runs" / "retrain-long" / "workflow.json").read_text())
    reason = "Stopped: fashion-pipeline up received SIGTERM"
    assert record["phase"] == "Failed" and record["message"] == reason
    nodes = {n["name"]: n for n in record["nodes"]}
    assert nodes["train"]["phase"] == "Failed" and nodes["train"]["message"] == reason
    assert nodes["onExit"]["phase"] == "Succeeded"  # the exit handler still ran, as after `argo stop`
    assert not (tmp_path / "runs" / "retrain-later").exists()
    assert {p.name for p in (store / "events" / "retrain").iterdir()} == {"long.json", "later.json"}
    assert "Traceback" not in text and "stopping: fashion-pipeline up received SIGTERM" in text

    # The next start queues the accepted event that never started, and not the one that was stopped.
    hook_port = free_port()
    hook = start(["webhook", "--port", str(hook_port)], tmp_path, store, tmp_path / "webhook.log")
    hook_processes = [psutil.Process(hook.pid)]
    try:
        later = wait_for(lambda: run_status(hook_port, "retrain-later"), "the queued event", timeout=120)
        assert later["phase"] in ("Pending", "Running")
        assert run_status(hook_port, "retrain-long")["phase"] == "Failed"
        wait_for(lambda: (tmp_path / "runs" / "retrain-later" / "workflow.json").exists(), "its run", timeout=120)
        hook_processes = tree(hook.pid)
        hook_code = stop(hook, hook_processes)
    finally:
        cleanup(hook_processes)
    assert hook_code == 0, (tmp_path / "webhook.log").read_text()[-3000:]
    assert wait_for(lambda: not alive(hook_processes), "the webhook's tree to be gone", timeout=30)
    assert wait_for(lambda: bindable(hook_port), "the webhook's port", timeout=30)
    later = json.loads((tmp_path / "runs" / "retrain-later" / "workflow.json").read_text())
    assert later["phase"] == "Failed" and later["message"] == "Stopped: fashion-pipeline webhook received SIGTERM"


def test_sigterm_stops_serve_with_two_workers_and_frees_the_port(seeded: Path, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    server = start(["serve", "--port", str(port), "--workers", "2"], tmp_path, seeded, log)
    processes = [psutil.Process(server.pid)]
    try:
        wait_for(lambda: ready(port), "the workers", timeout=300)
        answer = requests.post(
            f"http://127.0.0.1:{port}/v1/models/fashion-mnist:predict",
            json={"instances": [[[0] * 28] * 28]},
            timeout=30,
        )
        assert answer.status_code == 200
        processes = tree(server.pid)
        assert len(processes) == 3
        code = stop(server, processes, timeout=120)
    finally:
        cleanup(processes)
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert wait_for(lambda: not alive(processes), "the workers to be gone", timeout=30), alive(processes)
    assert wait_for(lambda: bindable(port), "the port", timeout=30)
    assert text.count("steps.serving.server: stopped") == 2 and "Traceback" not in text


def test_sigterm_stops_a_run_during_training_and_records_it_failed(seeded: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(seeded, store)
    params = [arg for key, value in LONG_TRAINING.items() for arg in ("-p", f"{key}={value}")]
    out = tmp_path / "run.json"
    run = start(["run", *params, "--name", "stopped", "-o", "json"], tmp_path, store, tmp_path / "run.log", out)
    processes = [psutil.Process(run.pid)]
    record_path = tmp_path / "runs" / "stopped" / "workflow.json"
    try:
        wait_for(lambda: training(json.loads(record_path.read_text())), "training to start", timeout=600)
        processes = tree(run.pid)
        assert any(" train " in c for c in commands(processes))
        code = stop(run, processes)
    finally:
        cleanup(processes)
    text = (tmp_path / "run.log").read_text()
    assert code == 128 + signal.SIGTERM, text[-3000:]
    assert wait_for(lambda: not alive(processes), "the run's tree to be gone", timeout=30), alive(processes)
    record = json.loads(record_path.read_text())
    reason = "Stopped: fashion-pipeline run received SIGTERM"
    assert record["phase"] == "Failed" and record["message"] == reason
    nodes = {n["name"]: n for n in record["nodes"]}
    assert nodes["train"]["phase"] == "Failed" and nodes["train"]["message"] == reason
    assert nodes["evaluate"]["phase"] == "Omitted" and nodes["onExit"]["phase"] == "Succeeded"
    assert json.loads(out.read_text()) == record  # `-o json`: the run record on stdout, for scripts


def test_the_served_model_follows_kserve_lifecycle(
    seeded: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Load makes it ready, start (before any request) begins the watcher and the inference thread,
    stopping turns readiness off, and KServe's unload ends both threads."""
    monkeypatch.setattr(sys, "argv", sys.argv[:1])  # `import kserve` parses the command line
    from kserve.model_repository import ModelRepository

    from steps.registry import Registry
    from steps.serving.model import FashionModel
    from steps.serving.router import AliasWatcher, Router
    from steps.storage import open_store

    store = tmp_path / "store"
    shutil.copytree(seeded, store)
    registry = Registry(open_store(str(store)))
    router = Router()
    watcher = AliasWatcher(registry, router)
    model = FashionModel(router, watcher, poll_s=0.2)
    repository = ModelRepository()
    repository.update(model)
    assert not model.ready and not watcher.running() and not model.batcher.running()
    assert model.load() and model.ready and router.production is not None
    assert not watcher.running() and not model.batcher.running()
    model.start()
    assert watcher.running() and model.batcher.running()
    production = registry.alias("production")
    assert production is not None
    version = production["version"]
    registry.set_alias("canary", version, "lifecycle test", actor="test", extra={"percent": 10})
    wait_for(lambda: router.canary is not None, "the watcher to follow the canary alias", timeout=60)
    model.stopping()
    assert not model.ready
    repository.unload(model.name)
    assert not watcher.running() and not model.batcher.running()
