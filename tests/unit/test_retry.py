"""`runs retry` and dead engines, on small workflows whose nodes are real Python processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_engine import out_param, workflow

from steps.errors import UserError
from steps.lifeline import Owner
from workflows.engine import Engine
from workflows.engine.records import ENGINE_GONE, RECORD_FILE, read_record, write_record


def counted(name: str, flag: Path, fail_first: bool = False) -> dict[str, Any]:
    """A node that counts its runs in `flag`'s directory, writes `runs` as output, and fails its first run if told."""
    code = (
        "import sys, pathlib; f = pathlib.Path(sys.argv[1]); n = int(f.read_text()) + 1 if f.exists() else 1; "
        "f.write_text(str(n)); open(sys.argv[2] + '/runs', 'w').write(str(n)); "
        f"sys.exit(1 if {fail_first} and n == 1 else 0)"
    )
    return {
        "name": name,
        "inputs": {"parameters": [{"name": "upstream", "value": ""}]},
        "container": {"image": "python:3.11", "command": ["python", "-c", code, str(flag), "/tmp/outputs"]},
        "outputs": {"parameters": [{**out_param("runs"), "globalName": f"{name}-runs"}]},
    }


def chain(tmp_path: Path) -> dict[str, Any]:
    """first -> second (fails once) -> third, and an exit handler: every node counts its runs."""
    tasks: list[dict[str, Any]] = [
        {"name": "first", "template": "first"},
        {
            "name": "second",
            "template": "second",
            "depends": "first",
            "arguments": {"parameters": [{"name": "upstream", "value": "{{tasks.first.outputs.parameters.runs}}"}]},
        },
        {"name": "third", "template": "third", "depends": "second"},
    ]
    templates = [
        counted("first", tmp_path / "first.count"),
        counted("second", tmp_path / "second.count", fail_first=True),
        counted("third", tmp_path / "third.count"),
        counted("bye", tmp_path / "bye.count"),
    ]
    return workflow(tasks, templates, onExit="bye")


def test_retry_reruns_the_failed_node_and_what_follows_and_reuses_what_succeeded(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    failed = Engine(chain(tmp_path), runs, name="chain").execute()
    assert failed.phase == "Failed"
    retried = Engine.retry(runs, "chain").execute()
    assert retried.phase == "Succeeded"
    counts = {n: int((tmp_path / f"{n}.count").read_text()) for n in ("first", "second", "third", "bye")}
    assert counts == {"first": 1, "second": 2, "third": 1, "bye": 2}
    record = json.loads((runs / "chain" / RECORD_FILE).read_text())
    nodes = {n["name"]: n for n in record["nodes"]}
    assert nodes["first"]["outputs"]["parameters"] == {"runs": "1"} and nodes["first"]["attempts"] == 1
    assert nodes["second"]["earlier_attempts"] == 1 and (runs / "chain" / "second" / "attempt-2").is_dir()
    assert record["outputs"]["parameters"] == {
        "first-runs": "1",
        "second-runs": "2",
        "third-runs": "1",
        "bye-runs": "2",
    }
    assert [t["phase"] for t in record["tries"]] == ["Failed"]
    assert {n["name"]: n["phase"] for n in record["tries"][0]["nodes"]}["second"] == "Failed"


def test_retry_refuses_a_run_that_succeeded_is_running_or_does_not_exist(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    Engine(chain(tmp_path), runs, name="chain").execute()
    Engine.retry(runs, "chain").execute()
    with pytest.raises(UserError, match="run chain Succeeded: there is nothing to retry"):
        Engine.retry(runs, "chain")
    record = json.loads((runs / "chain" / RECORD_FILE).read_text())
    write_record(runs / "chain", {**record, "phase": "Running", "engine": Owner.current().as_record()})
    with pytest.raises(UserError, match="run chain is Running: wait for it to end"):
        Engine.retry(runs, "chain")
    with pytest.raises(UserError, match="no run named 'other'"):
        Engine.retry(runs, "other")


def ended_process() -> Owner:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.2)"])
    owner = Owner.of(proc.pid)
    proc.wait()
    return owner


def test_an_owner_is_gone_once_its_process_ended_or_its_pid_was_reused() -> None:
    assert not Owner.current().gone()
    assert ended_process().gone()
    me = Owner.current()
    assert Owner(me.host, me.pid, me.started - 5).gone()  # same pid, another start: another process
    assert not Owner("another-host", 1, 0.0).gone()  # nothing here can tell: never assumed dead
    assert Owner.parse(str(me)) == Owner(me.host, me.pid, round(me.started, 2))
    assert Owner.parse("not an owner") is None


def test_a_running_record_whose_engine_died_reads_as_error_and_is_written_so(tmp_path: Path) -> None:
    directory = tmp_path / "runs" / "cut"
    directory.mkdir(parents=True)
    nodes = [
        {"name": "fetch", "phase": "Succeeded", "started": "2026-12-05T01:00:00Z", "duration_s": 2.0},
        {"name": "train", "phase": "Running", "started": "2026-12-05T01:00:02Z", "duration_s": 30.5},
        {"name": "gate", "phase": "Pending", "started": None, "duration_s": None},
    ]
    record = {"name": "cut", "phase": "Running", "message": "", "started": "2026-12-05T01:00:00Z", "duration_s": 33.0}
    write_record(directory, {**record, "nodes": nodes, "engine": ended_process().as_record()})
    settled = read_record(directory)
    assert (settled["phase"], settled["message"], settled["finished"]) == ("Error", ENGINE_GONE, "2026-12-05T01:00:33Z")
    assert [(n["phase"], n.get("message")) for n in settled["nodes"]] == [
        ("Succeeded", None),
        ("Error", ENGINE_GONE),
        ("Pending", None),
    ]
    assert json.loads((directory / RECORD_FILE).read_text()) == settled

    alive = {**record, "nodes": nodes, "engine": Owner.current().as_record()}
    write_record(directory, alive)
    assert read_record(directory)["phase"] == "Running"
    write_record(directory, {**record, "nodes": nodes})  # no engine named (an older record): never guessed
    assert read_record(directory)["phase"] == "Running"


def test_the_run_queue_finds_runs_a_crash_cut_short_and_retries_them(tmp_path: Path) -> None:
    """What `up --retry-interrupted` does at start: runs whose engine died, retried through the queue."""
    import time

    from workflows.engine import RunQueue

    runs = tmp_path / "runs"
    manifest = chain(tmp_path)
    Engine(manifest, runs, name="cut").execute()  # second fails: a Failed run is not "interrupted"
    record = json.loads((runs / "cut" / RECORD_FILE).read_text())
    write_record(runs / "cut", {**record, "phase": "Running", "engine": ended_process().as_record()})
    queue = RunQueue(lambda: manifest, runs, {})
    try:
        assert queue.interrupted() == ["cut"]
        queue.retry("cut")
        deadline = time.monotonic() + 60
        while queue.busy() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (queue.status("cut") or {}).get("phase") == "Succeeded"
        assert queue.interrupted() == []
    finally:
        queue.close()
