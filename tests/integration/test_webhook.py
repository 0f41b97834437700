"""The local retrain webhook over real HTTP: one valid event, one real run; every abuse refused.

An event decides only what the contract lists: the policy is the operator's (`-p`), and an event's
data_url must start with an allowed prefix. Every run records who started it and with what.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import CLI

from steps.registry import Registry
from steps.storage import open_store
from workflows import cli, trigger
from workflows.engine import RunQueue, workflow_parameters
from workflows.pipeline import manifest
from workflows.triggers import schedule
from workflows.triggers.payload import DEFAULT_DATA_URL_PREFIXES, operator_arguments
from workflows.triggers.schedule import Scheduler
from workflows.triggers.webhook import EventLog, WebhookServer

TOKEN = "s3cret-token-for-tests"
QUICK = {"train_limit": 2000, "epochs": 1}
# A 2000-image model is far below the default floors: the operator lowers them, as `up -p` does.
OPERATOR = {"min_accuracy": "0", "min_class_recall": "0"}
# What an event once could send to push a worse model, and every other argument that is the operator's.
POLICY_IN_A_PAYLOAD: dict[str, Any] = {
    "min_accuracy": 0,
    "min_class_recall": 0,
    "min_delta": -1,
    "alpha": 1,
    "allow_equal": True,
    "tolerance": 1,
    "first_run": "promote",
    "canary_percent": 100,
    "rollout_target": "local",
    "store": "file:///tmp/elsewhere",
    "s3_endpoint": "http://169.254.169.254",
    "trigger": {"by": "schedule"},
}


class Receiver:
    def __init__(
        self,
        root: Path,
        operator: dict[str, str] | None = None,
        prefixes: tuple[str, ...] = DEFAULT_DATA_URL_PREFIXES,
    ) -> None:
        self.root = root
        store = open_store(str(root / "store"))
        defaults = {**workflow_parameters(manifest()), "store": store.uri, "rollout_target": "local", "s3_endpoint": ""}
        self.runs = RunQueue(manifest, root / "runs", defaults, OPERATOR if operator is None else operator)
        self.server = WebhookServer("127.0.0.1", 0, TOKEN, EventLog(store), self.runs, data_url_prefixes=prefixes)
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


def wait_finished(receiver: Receiver, name: str, timeout: float = 900) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = requests.get(f"{receiver.url}/runs/{name}", timeout=5).json()
        if status["phase"] not in ("Pending", "Running"):
            return status
        time.sleep(0.5)
    raise AssertionError(f"{name} did not finish")


def test_a_valid_event_starts_exactly_one_run_with_its_parameters(receiver: Receiver) -> None:
    body = {"event_id": "drop-2026-11-27", "reason": "new data landed", **QUICK}
    response = receiver.post(body)
    assert response.status_code == 202, response.text
    assert response.json() == {"run": "retrain-drop-2026-11-27", "status": "/runs/retrain-drop-2026-11-27"}
    status = wait_finished(receiver, "retrain-drop-2026-11-27")
    assert status["phase"] == "Succeeded", status
    assert status["parameters"]["train_limit"] == "2000" and status["parameters"]["epochs"] == "1"
    assert status["parameters"]["reason"] == "new data landed"
    # The audit trail: the run record, the decision record and the alias history say who asked, with what.
    started = json.loads(status["parameters"]["trigger"])
    assert started == {"by": "webhook", "via": "fashion-pipeline webhook", "payload": body, "operator": OPERATOR}
    registry = Registry(open_store(str(receiver.root / "store")))
    version = status["outputs"]["parameters"]["model_version"]
    [decision] = registry.records(version, "decisions")
    assert decision["trigger"] == started and decision["workflow"] == "retrain-drop-2026-11-27"
    assert decision["policy"]["min_accuracy"] == 0.0
    assert (
        decision["policy_sources"]["min_accuracy"] == "operator override (fashion-pipeline webhook -p min_accuracy=0)"
    )
    assert decision["policy_sources"]["alpha"] == "template default"
    [rolled_out] = registry.records(version, "rollouts")
    assert rolled_out["trigger"] == started and rolled_out["policy_sources"] == {"canary_percent": "template default"}
    [change] = registry.history("production")
    assert change["version"] == version and change["trigger"] == started
    assert change["workflow"] == "retrain-drop-2026-11-27"
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
    "out of range": ({"body": {"event_id": "e2", "epochs": -1}}, 400),
    "wrong type": ({"body": {"event_id": "e3", "epochs": "two"}}, 400),
    "policy in the payload": ({"body": {"event_id": "e4", "min_accuracy": 0, "allow_equal": True}}, 400),
    "file:// data_url": ({"body": {"event_id": "e5", "data_url": "file:///etc/passwd"}}, 400),
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


def _nothing_started(receiver: Receiver) -> bool:
    runs = receiver.root / "runs"
    no_runs = not runs.exists() or not any(p for p in runs.iterdir() if not p.name.startswith("."))
    return no_runs and not receiver.runs.busy() and EventLog(open_store(str(receiver.root / "store"))).all() == []


def test_every_policy_field_in_a_payload_is_refused_and_starts_nothing(receiver: Receiver) -> None:
    assert set(POLICY_IN_A_PAYLOAD) <= set(operator_arguments())
    for field, value in POLICY_IN_A_PAYLOAD.items():
        response = receiver.post({"event_id": f"weaken-{field.replace('_', '-')}", **QUICK, field: value})

        assert response.status_code == 400, f"{field}: {response.status_code} {response.text[:200]}"
        [problem] = response.json()["problems"]
        assert problem.startswith(f"{field}: refused") and "set by the operator" in problem, problem
    assert _nothing_started(receiver)


@pytest.mark.parametrize(
    "url",
    ["file:///etc/passwd", "file:///srv/drops/2026/", "http://169.254.169.254/latest/", "ftp://mirror/x"],
)
def test_a_data_url_outside_the_default_allowlist_is_refused(receiver: Receiver, url: str) -> None:
    response = receiver.post({"event_id": "drop", **QUICK, "data_url": url})

    assert response.status_code == 400, response.text
    [problem] = response.json()["problems"]
    assert problem.startswith("data_url:")
    if url.startswith(("file://", "http://")):  # ftp:// is no URL the fetch step reads at all
        assert "the allowed prefixes are https://, s3://" in problem
    assert _nothing_started(receiver)


def test_a_data_url_the_operator_allowed_is_accepted(tmp_path: Path, real_mirror: Path) -> None:
    allowed = Receiver(tmp_path, prefixes=("file:///srv/drops/", "s3://fashion-pipeline/drops/"))
    try:
        allowed.runs.close()  # accept, and run nothing: this is about what the receiver lets through
        accepted = allowed.post({"event_id": "drop-1", **QUICK, "data_url": "file:///srv/drops/2026-11-27/"})
        refused = allowed.post({"event_id": "drop-2", **QUICK, "data_url": "https://mirror.example.com/fashion/"})
        climbing = allowed.post({"event_id": "drop-3", **QUICK, "data_url": "file:///srv/drops/../../etc/"})
    finally:
        allowed.server.shutdown()

    assert accepted.status_code == 202, accepted.text
    status = allowed.runs.status("retrain-drop-1")
    assert status is not None and status["parameters"]["data_url"] == "file:///srv/drops/2026-11-27/"
    assert refused.status_code == 400
    assert "the allowed prefixes are file:///srv/drops/, s3://fashion-pipeline/drops/" in refused.text
    assert climbing.status_code == 400


def test_operator_parameters_apply_to_webhook_and_scheduled_runs_of_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The queue `up` builds from `-p`: a webhook run and a scheduled run both get the operator's policy."""
    monkeypatch.setenv("FASHION_PIPELINE_WEBHOOK_TOKEN", TOKEN)
    monkeypatch.setattr(cli.STATE, "store_uri", str(tmp_path / "store"))
    server, runs = cli.platform.receiver(
        "127.0.0.1", 0, None, tmp_path / "runs", ["min_accuracy=0.5", "epochs=1"], None, "fashion-pipeline up"
    )
    runs.close()  # queue, run nothing: this is about the arguments each run gets
    server.start()
    try:
        # The tick first: with a run waiting, a tick is skipped (concurrencyPolicy Forbid).
        Scheduler(runs, ["0 2 * * *"], "Etc/UTC").fire(datetime(2026, 11, 28, 2, 0))
        response = requests.post(
            f"http://127.0.0.1:{server.port}/retrain",
            json={"event_id": "up-2", "epochs": 3},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=10,
        )
        assert response.status_code == 202, response.text
    finally:
        server.shutdown()

    webhook_run = runs.status("retrain-up-2")
    scheduled_run = runs.status("fashion-mnist-nightly-202611280200")
    assert webhook_run is not None and scheduled_run is not None
    for run, by in ((webhook_run, "webhook"), (scheduled_run, "schedule")):
        assert run["parameters"]["min_accuracy"] == "0.5", by
        started = json.loads(run["parameters"]["trigger"])
        assert started["by"] == by and started["via"] == "fashion-pipeline up"
        assert started["operator"] == {"epochs": "1", "min_accuracy": "0.5"}
    # The operator's values are defaults for what an event may decide, and fixed for the rest.
    assert webhook_run["parameters"]["epochs"] == "3" and scheduled_run["parameters"]["epochs"] == "1"
    # The schedule trains for quality, as the CronWorkflow does; an on-demand run keeps the default budget.
    assert scheduled_run["parameters"]["train_budget_s"] == str(schedule.NIGHTLY_BUDGET_S)
    assert "train_budget_s" not in webhook_run["parameters"]  # the template's default budget
    assert json.loads(webhook_run["parameters"]["trigger"])["payload"] == {"event_id": "up-2", "epochs": 3}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-p", "min_acuracy=0.5"], "unknown parameter min_acuracy"),
        (["-p", "first_run=maybe"], "parameter first_run='maybe' must be one of promote, reject"),
        (["-p", "min_accuracy"], "use NAME=VALUE"),
        (["-p", "trigger={}"], "-p trigger: set by the launcher"),
        (["--allow-data-url", "ftp://mirror/"], "not a URL prefix the fetch step reads"),
        (["--allow-data-url", "https://data.example.com"], "end it with '/'"),
    ],
)
@pytest.mark.parametrize("command", ["webhook", "up"])
def test_operator_options_are_checked_before_anything_starts(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: str,
    args: list[str],
    message: str,
) -> None:
    monkeypatch.setenv("FASHION_PIPELINE_WEBHOOK_TOKEN", TOKEN)
    code = cli.main(["--store", str(tmp_path / "store"), command, "--port", "0", *args])

    stderr = capsys.readouterr().err
    assert code == 1
    assert stderr.count("\n") == 1 and message in stderr and "Traceback" not in stderr, stderr
    assert not (tmp_path / "runs").exists()


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


def test_run_takes_a_file_data_url_from_the_operator(tmp_path: Path, drop: Path) -> None:
    """The allowlist is for events: on the command line the user is the operator, and file:// works."""
    fetch_only = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": "fetch-only"},
        "spec": {
            "entrypoint": "main",
            "arguments": {
                "parameters": [
                    {"name": "data_url", "value": ""},
                    {"name": "store", "value": ""},
                    {"name": "trigger", "value": trigger.MANUAL},
                ]
            },
            "templates": [
                {"name": "main", "dag": {"tasks": [{"name": "fetch", "template": "fetch"}]}},
                {
                    "name": "fetch",
                    "container": {
                        "image": "fashion-pipeline/steps",
                        "command": ["fashion-pipeline"],
                        "args": ["fetch", "--data-url", "{{workflow.parameters.data_url}}", "--out", "/tmp/outputs"],
                        "env": [{"name": "FASHION_PIPELINE_STORE", "value": "{{workflow.parameters.store}}"}],
                    },
                },
            ],
        },
    }
    (tmp_path / "fetch-only.yaml").write_text(json.dumps(fetch_only))
    env = {**os.environ, "FASHION_PIPELINE_STORE": str(tmp_path / "store")}
    data_url = drop.as_uri()
    proc = subprocess.run(
        [CLI, "run", "-f", "fetch-only.yaml", "-p", f"data_url={data_url}", "--name", "from-a-drop"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((tmp_path / "runs" / "from-a-drop" / "workflow.json").read_text())
    started = json.loads(record["parameters"]["trigger"])
    assert started["by"] == "cli" and started["via"] == "fashion-pipeline run"
    assert started["operator"] == {"data_url": data_url}
    assert open_store(str(tmp_path / "store")).list("datasets")


def test_events_from_before_a_restart_are_queued_again_only_if_todays_contract_takes_them(
    tmp_path: Path, real_mirror: Path
) -> None:
    log = EventLog(open_store(str(tmp_path / "store")))
    # Accepted by an older receiver, when the payload could still carry the policy.
    log.accept("old", {"event_id": "old", "run": "retrain-old", "parameters": {"min_accuracy": "0"}})
    log.accept(
        "weak",
        {"event_id": "weak", "run": "retrain-weak", "payload": {"event_id": "weak", "allow_equal": True}},
    )
    log.accept("fine", {"event_id": "fine", "run": "retrain-fine", "payload": {"event_id": "fine", "epochs": 2}})
    restarted = Receiver(tmp_path)
    try:
        restarted.runs.close()  # queue, run nothing
        assert restarted.server.requeue_unstarted() == 1
    finally:
        restarted.server.shutdown()

    assert restarted.runs.status("retrain-old") is None and restarted.runs.status("retrain-weak") is None
    requeued = restarted.runs.status("retrain-fine")
    assert requeued is not None and requeued["parameters"]["epochs"] == "2"
    assert requeued["parameters"]["min_accuracy"] == OPERATOR["min_accuracy"]
    assert json.loads(requeued["parameters"]["trigger"])["payload"] == {"event_id": "fine", "epochs": 2}
