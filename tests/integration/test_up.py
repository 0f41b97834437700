"""`fashion-pipeline up`: the embedded platform in one process, driven by a real webhook call."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import requests
from conftest import CLI, free_port

from steps.registry import Registry
from steps.storage import open_store

OPERATOR = ["-p", "min_accuracy=0", "-p", "min_class_recall=0"]


def test_up_runs_a_webhook_retrain_then_serves_it_and_stops_cleanly_on_ctrl_c(
    tmp_path: Path, real_mirror: Path
) -> None:
    server_port, webhook_port = free_port(), free_port()
    env = {**os.environ, "FASHION_PIPELINE_STORE": str(tmp_path / "store"), "FASHION_PIPELINE_WEBHOOK_TOKEN": "t0ken"}
    log = open(tmp_path / "up.log", "w")
    proc = subprocess.Popen(
        # The operator lowers the floors for a 2000-image model: events cannot (they may not name the policy).
        [CLI, "up", "--port", str(server_port), "--webhook-port", str(webhook_port), *OPERATOR],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        webhook = f"http://127.0.0.1:{webhook_port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                requests.get(f"{webhook}/healthz", timeout=1)
                break
            except requests.RequestException:
                time.sleep(0.2)
        body: dict[str, Any] = {"event_id": "up-1", "train_limit": 2000, "epochs": 1}
        response = requests.post(f"{webhook}/retrain", json=body, headers={"Authorization": "Bearer t0ken"}, timeout=10)
        assert response.status_code == 202, response.text
        served = None
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and served is None:
            try:
                answer = requests.post(
                    f"http://127.0.0.1:{server_port}/v1/models/fashion-mnist:predict",
                    json={"instances": [[[0] * 28] * 28]},
                    timeout=5,
                )
                served = answer.headers.get("X-Model-Version")
            except requests.RequestException:
                time.sleep(1)
        status = requests.get(f"{webhook}/runs/retrain-up-1", timeout=5).json()
        assert served is not None and served == status["outputs"]["parameters"]["model_version"]
        [decision] = Registry(open_store(str(tmp_path / "store"))).records(served, "decisions")
        assert decision["policy"]["min_accuracy"] == 0.0
        assert decision["policy_sources"]["min_accuracy"] == "operator override (fashion-pipeline up -p min_accuracy=0)"
        assert decision["trigger"]["by"] == "webhook" and decision["trigger"]["payload"] == body
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=180)
        log.close()
    text = (tmp_path / "up.log").read_text()
    assert code == 0, text[-3000:]
    assert "next scheduled retrain at" in text and "(Etc/UTC)" in text
    assert "stopped" in text and "Traceback" not in text
    with_server = [ln for ln in text.splitlines() if " server: " in ln]
    assert with_server, "the model server's log is part of the combined log"
