"""The local retrain webhook over real HTTP: one valid event, one real run; every abuse refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from steps.storage import open_store
from workflows.engine import workflow_parameters
from workflows.pipeline import manifest
from workflows.webhook import EventLog, RunQueue, WebhookServer

TOKEN = "s3cret-token-for-tests"
CLI = shutil.which("fashion-pipeline", path=str(Path(sys.executable).parent)) or "fashion-pipeline"
QUICK = {"train_limit": 2000, "epochs": 1, "min_accuracy": 0.0, "min_class_recall": 0.0}


class Receiver:
    def __init__(self, root: Path) -> None:
        self.root = root
        store = open_store(str(root / "store"))
        defaults = {**workflow_parameters(manifest()), "store": store.uri, "rollout_target": "local", "s3_endpoint": ""}
        self.runs = RunQueue(manifest, root / "runs", defaults)
        self.server = WebhookServer("127.0.0.1", 0, TOKEN, EventLog(store), self.runs)
        self.server.start()
        self.url = f"http://127.0.0.1:{self.server.port}"

    def post(self, body: Any, token: str | None = TOKEN, content_type: str = "application/json") -> requests.Response:
        headers = {"Content-Type": content_type}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return requests.post(f"{self.url}/retrain", data=data, headers=headers, timeout=10)

    def stop(self) -> None:
        self.server.shutdown()
        self.runs.close()


@pytest.fixture
def receiver(tmp_path: Path, real_mirror: Path) -> Iterator[Receiver]:
    started = Receiver(tmp_path)
    try:
        yield started
    finally:
        started.stop()


def wait_finished(receiver: Receiver, name: str, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = requests.get(f"{receiver.url}/runs/{name}", timeout=5).json()
        if status["phase"] not in ("Pending", "Running"):
            return status
        time.sleep(0.5)
    raise AssertionError(f"{name} did not finish")


def test_a_valid_event_starts_exactly_one_run_with_its_parameters(receiver: Receiver) -> None:
    response = receiver.post({"event_id": "drop-2026-11-27", "reason": "new data landed", **QUICK})
    assert response.status_code == 202, response.text
    assert response.json() == {"run": "retrain-drop-2026-11-27", "status": "/runs/retrain-drop-2026-11-27"}
    status = wait_finished(receiver, "retrain-drop-2026-11-27")
    assert status["phase"] == "Succeeded", status
    assert status["parameters"]["train_limit"] == "2000" and status["parameters"]["epochs"] == "1"
    assert status["parameters"]["reason"] == "new data landed"
    assert [p.name for p in (receiver.root / "runs").iterdir() if not p.name.startswith(".")] == [
        "retrain-drop-2026-11-27"
    ]
    again = receiver.post({"event_id": "drop-2026-11-27", **QUICK})
    assert again.status_code == 409 and again.json()["run"] == "retrain-drop-2026-11-27"


ABUSE: dict[str, tuple[dict[str, Any], int]] = {
    "no token": ({"token": None}, 401),
    "wrong token": ({"token": "guess"}, 403),
    "wrong content type": ({"content_type": "text/plain"}, 415),
    "over the size cap": ({"body": b'{"event_id": "big", "reason": "' + b"x" * 70000 + b'"}'}, 413),
    "invalid JSON": ({"body": b'{"event_id": '}, 400),
    "not an object": ({"body": b"[1]"}, 400),
    "missing event_id": ({"body": {"epochs": 2}}, 400),
    "misspelt parameter": ({"body": {"event_id": "e1", "epoch": 2}}, 400),
    "out of range": ({"body": {"event_id": "e2", "epochs": 0}}, 400),
    "wrong type": ({"body": {"event_id": "e3", "allow_equal": "yes"}}, 400),
    "bad event id": ({"body": {"event_id": "Not A Name!"}}, 400),
}


def test_every_abuse_gets_its_status_and_starts_nothing(receiver: Receiver) -> None:
    for case, (how, status) in ABUSE.items():
        body = how.get("body", {"event_id": "abuse", **QUICK})
        response = receiver.post(
            body, token=how.get("token", TOKEN), content_type=how.get("content_type", "application/json")
        )
        assert response.status_code == status, f"{case}: {response.status_code} {response.text[:200]}"
        assert "error" in response.json(), case
    misspelt = receiver.post({"event_id": "e1", "epoch": 2}).json()
    assert any("epoch" in problem for problem in misspelt["problems"])
    assert not (receiver.root / "runs").exists() or not any((receiver.root / "runs").iterdir())
    assert EventLog(open_store(str(receiver.root / "store"))).all() == []
    assert requests.get(f"{receiver.url}/runs/retrain-abuse", timeout=5).status_code == 404


def test_a_duplicate_event_is_refused_after_a_restart(tmp_path: Path, real_mirror: Path) -> None:
    first = Receiver(tmp_path)
    try:
        first.runs.close()  # accept the event but run nothing: this is about the event log
        assert first.post({"event_id": "once", **QUICK}).status_code == 202
    finally:
        first.server.shutdown()
    second = Receiver(tmp_path)
    try:
        response = second.post({"event_id": "once", **QUICK})
        assert response.status_code == 409
        assert "already received" in response.json()["error"]
    finally:
        second.server.shutdown()
        second.runs.close()


def test_webhook_refuses_to_start_without_a_token(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "FASHION_PIPELINE_WEBHOOK_TOKEN"}
    proc = subprocess.run(
        [CLI, "webhook", "--port", "0"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "the webhook needs a token" in proc.stderr
