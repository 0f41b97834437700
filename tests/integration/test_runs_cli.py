"""`run` as a user drives it, on small workflows (`run --file`) whose nodes are real processes:
live progress rows, the result on stdout, stops by signal, and the `runs` commands."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from conftest import CLI

from steps.lifeline import Owner

# The step reports progress as Argo documents it: `k/N` as the file's last line (a status line above).
COUNT = """
import os, sys, time
progress = os.environ["ARGO_PROGRESS_FILE"]
for k in range(1, 4):
    print(f"line {k}", flush=True)
    with open(progress + ".tmp", "w") as f:
        f.write(f"step {k} of 3\\n{k}/3\\n")
    os.replace(progress + ".tmp", progress)
    time.sleep(1.5)
open(sys.argv[1] + "/total", "w").write("3")
"""
TALK = "import time\nfor k in range(1, 7):\n    print(f'line {k}', flush=True)\n    time.sleep(0.5)\n"
# Ignores SIGTERM, as a step that hangs would: only SIGKILL ends it.
HANG = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("hanging", flush=True)
time.sleep(600)
"""


def step(name: str, code: str, *args: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "container": {"image": "python:3.11", "command": ["python", "-c", code, *args]}, **extra}


def workflow(path: Path, tasks: list[dict[str, Any]], templates: list[dict[str, Any]], **spec: Any) -> Path:
    manifest = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"generateName": "tiny-"},
        "spec": {"entrypoint": "main", "templates": [{"name": "main", "dag": {"tasks": tasks}}, *templates], **spec},
    }
    path.write_text(yaml.safe_dump(manifest))
    return path


def counting(tmp_path: Path) -> Path:
    counter = step(
        "count",
        COUNT,
        "/tmp/outputs",
        outputs={"parameters": [{"name": "total", "valueFrom": {"path": "/tmp/outputs/total"}}]},
    )
    tasks = [{"name": "count", "template": "count"}, {"name": "talk", "template": "talk", "depends": "count"}]
    return workflow(tmp_path / "counting.yaml", tasks, [counter, step("talk", TALK)])


def hanging(tmp_path: Path) -> Path:
    tasks = [{"name": "hang", "template": "hang"}]
    return workflow(tmp_path / "hanging.yaml", tasks, [step("hang", HANG), step("cleanup", HANG)], onExit="cleanup")


def fashion(cwd: Path, *args: str, timeout: float = 300, env: dict[str, str] | None = None) -> Any:
    return subprocess.run([CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def ignoring_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a supervisor or a background job starts us


def start(cwd: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [CLI, *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=ignoring_sigint,
    )


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def record(cwd: Path, name: str) -> dict[str, Any]:
    try:
        return json.loads((cwd / "runs" / name / "workflow.json").read_text())
    except (OSError, ValueError):
        return {}


def node_phase(cwd: Path, name: str, node: str) -> str:
    return next((n["phase"] for n in record(cwd, name).get("nodes", []) if n["name"] == node), "")


def alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    def running(p: psutil.Process) -> bool:
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    return [p for p in processes if running(p)]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """One finished run of the counting workflow, named `count-1`."""
    cwd = tmp_path_factory.mktemp("runs-cli")
    return cwd, fashion(cwd, "run", "--file", str(counting(cwd)), "--name", "count-1")


def test_progress_rows_show_what_the_step_reports_and_the_result_goes_to_stdout(
    finished: tuple[Path, Any],
) -> None:
    cwd, proc = finished
    assert proc.returncode == 0, proc.stderr
    # Plain log mode (not a terminal): one line per report while the node runs.
    reported = [line for line in proc.stderr.splitlines() if line.startswith("count-1 count: Running: step ")]
    assert reported, proc.stderr
    count = next(n for n in record(cwd, "count-1")["nodes"] if n["name"] == "count")
    assert count["progress"] == "3/3" and count["phase"] == "Succeeded"
    assert proc.stdout.splitlines()[0].startswith("count-1 Succeeded in ")
    assert f"records     {cwd / 'runs' / 'count-1' / 'workflow.json'}" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_output_json_prints_the_run_record(tmp_path: Path) -> None:
    proc = fashion(tmp_path, "run", "--file", str(counting(tmp_path)), "--name", "as-json", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == record(tmp_path, "as-json")
    assert fashion(tmp_path, "run", "--file", "counting.yaml", "-o", "yaml").stderr.strip() == (
        "fashion-pipeline: error: --output 'yaml': use one of text, json"
    )


def test_runs_list_get_and_logs_read_the_runs_directory(finished: tuple[Path, Any]) -> None:
    cwd, _ = finished
    listed = fashion(cwd, "runs", "list")
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()[:2]
    assert header.split() == ["NAME", "PHASE", "STARTED", "DURATION", "DECISION", "MODEL"]
    assert row.split()[:2] == ["count-1", "Succeeded"]

    got = fashion(cwd, "runs", "get", "count-1")
    assert got.returncode == 0, got.stderr
    assert "Phase:      Succeeded" in got.stdout
    assert any(line.startswith("├─ ✔ count") and "3/3" in line for line in got.stdout.splitlines())
    assert any(line.startswith("└─ ✔ talk") for line in got.stdout.splitlines())
    assert "│     total = 3" in got.stdout

    logs = fashion(cwd, "runs", "logs", "count-1")
    expected = [*(f"count: line {k}" for k in range(1, 4)), *(f"talk: line {k}" for k in range(1, 7))]
    assert logs.stdout.splitlines() == expected
    one = fashion(cwd, "runs", "logs", "count-1", "--node", "talk")
    assert one.stdout.splitlines() == [f"line {k}" for k in range(1, 7)]


def test_unknown_names_are_one_line_errors_and_names_complete(finished: tuple[Path, Any]) -> None:
    cwd, _ = finished
    for args, expected in (
        (["runs", "get", "count-2"], "fashion-pipeline: error: no run named 'count-2' in runs: did you mean count-1?"),
        (["runs", "logs", "count-1", "--node", "nope"], "run count-1 has no node 'nope': it has count, talk"),
        (["runs", "delete", "gone"], "no run named 'gone' in runs"),
    ):
        proc = fashion(cwd, *args)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and expected in proc.stderr, proc.stderr
    env = {**os.environ, "_FASHION_PIPELINE_COMPLETE": "complete_bash", "COMP_WORDS": "fashion-pipeline runs get co"}
    completed = fashion(cwd, env={**env, "COMP_CWORD": "3"})
    assert completed.stdout.split() == ["count-1"]


def test_logs_follow_prints_until_the_run_ends(tmp_path: Path) -> None:
    run = start(tmp_path, "run", "--file", str(counting(tmp_path)), "--name", "followed")
    try:
        wait_for(lambda: bool(record(tmp_path, "followed")), "the run's record")
        followed = fashion(tmp_path, "runs", "logs", "followed", "--follow")
        assert run.poll() is not None or record(tmp_path, "followed")["phase"] != "Running"
    finally:
        run.wait(timeout=120)
    assert followed.returncode == 0, followed.stderr
    assert followed.stdout.splitlines()[-1] == "talk: line 6"
    assert len(followed.stdout.splitlines()) == 9


def test_runs_delete_removes_a_run_but_not_one_still_running(finished: tuple[Path, Any], tmp_path: Path) -> None:
    cwd, _ = finished
    runs = tmp_path / "runs"
    shutil.copytree(cwd / "runs" / "count-1", runs / "copy")
    shutil.copytree(cwd / "runs" / "count-1", runs / "stale")
    shutil.copytree(cwd / "runs" / "count-1", runs / "cut")
    stale = json.loads((runs / "stale" / "workflow.json").read_text())
    live = Owner.current().as_record()  # this process: an engine that is alive
    (runs / "stale" / "workflow.json").write_text(
        json.dumps({**stale, "name": "stale", "phase": "Running", "engine": live})
    )
    # The finished run's engine has ended: a copy still marked Running reads as Error, and may go.
    (runs / "cut" / "workflow.json").write_text(json.dumps({**stale, "name": "cut", "phase": "Running"}))
    refused = fashion(tmp_path, "runs", "delete", "stale")
    assert refused.returncode == 1 and "run stale is Running: stop it first" in refused.stderr
    deleted = fashion(tmp_path, "runs", "delete", "copy", "cut")
    assert deleted.returncode == 0, deleted.stderr
    deleted = fashion(tmp_path, "runs", "delete", "stale", "--force")
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout.splitlines() == ["deleted stale"]
    assert not (runs / "copy").exists() and not (runs / "stale").exists() and not (runs / "cut").exists()
    assert fashion(tmp_path, "runs", "list").stdout.strip() == "no runs in runs"


def test_ctrl_c_stops_a_run_started_with_sigint_ignored(tmp_path: Path) -> None:
    run = start(tmp_path, "run", "--file", str(counting(tmp_path)), "--name", "interrupted")
    try:
        wait_for(lambda: node_phase(tmp_path, "interrupted", "count") == "Running", "count to run")
        run.send_signal(signal.SIGINT)
        _, stderr = run.communicate(timeout=120)
    finally:
        run.kill()
    assert run.returncode == 128 + signal.SIGINT, stderr
    stopped = record(tmp_path, "interrupted")
    assert stopped["phase"] == "Failed"
    assert stopped["message"] == "Stopped: fashion-pipeline run received SIGINT"
    assert node_phase(tmp_path, "interrupted", "talk") == "Omitted"


def test_a_second_signal_forces_the_stop_and_skips_the_exit_handler(tmp_path: Path) -> None:
    run = start(tmp_path, "run", "--file", str(hanging(tmp_path)), "--name", "stubborn")
    try:
        wait_for(lambda: node_phase(tmp_path, "stubborn", "hang") == "Running", "the hanging step")
        tree = [psutil.Process(run.pid), *psutil.Process(run.pid).children(recursive=True)]
        run.send_signal(signal.SIGTERM)
        # The step ignores SIGTERM: it is killed after its grace period, then the exit handler starts (and hangs).
        wait_for(lambda: node_phase(tmp_path, "stubborn", "onExit") == "Running", "the exit handler", timeout=180)
        tree += psutil.Process(run.pid).children(recursive=True)
        run.send_signal(signal.SIGTERM)
        _, stderr = run.communicate(timeout=120)
    finally:
        run.kill()
    assert run.returncode == 128 + signal.SIGKILL, stderr
    stopped = record(tmp_path, "stubborn")
    assert stopped["phase"] == "Failed" and stopped["message"] == "Stopped: fashion-pipeline run received SIGTERM"
    assert node_phase(tmp_path, "stubborn", "onExit") == "Failed"
    wait_for(lambda: not alive(tree), "every process of the run to end", timeout=30)


TF_NATIVE_LOG = re.compile(r"^(WARNING: All log messages before absl::InitializeLog|[IWEF]\d{4} \d\d:\d\d:\d\d)", re.M)


def test_tensorflow_native_log_lines_only_with_verbose(tmp_path: Path, drop: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["FASHION_PIPELINE_STORE"] = str(tmp_path / "store")
    fetched = fashion(tmp_path, "fetch", "--data-url", str(drop), "--out", "fetch", env=env)
    assert fetched.returncode == 0, fetched.stderr
    dataset = (tmp_path / "fetch" / "dataset_uri").read_text()
    train = ["train", "--dataset", dataset, "--epochs", "1", "--batch-size", "32", "--architecture", "small-cnn"]
    quiet = fashion(tmp_path, *train, "--out", "quiet", env=env)
    assert quiet.returncode == 0, quiet.stderr
    assert not TF_NATIVE_LOG.search(quiet.stderr), quiet.stderr
    loud = fashion(tmp_path, "-v", *train, "--out", "loud", env=env)
    assert loud.returncode == 0, loud.stderr
    assert TF_NATIVE_LOG.search(loud.stderr), loud.stderr


def test_a_sigkilled_engine_takes_its_node_with_it_and_the_run_reads_as_error(tmp_path: Path) -> None:
    run = start(tmp_path, "run", "--file", str(hanging(tmp_path)), "--name", "cut")
    try:
        wait_for(lambda: node_phase(tmp_path, "cut", "hang") == "Running", "the node to start")
        nodes = psutil.Process(run.pid).children(recursive=True)
        assert nodes, "the node process"
    finally:
        run.kill()  # the engine alone: its node is in a session of its own
        run.communicate()
    gone = alive(nodes)
    deadline = time.monotonic() + 10
    while gone and time.monotonic() < deadline:
        time.sleep(0.1)
        gone = alive(nodes)
    for process in gone:
        process.kill()
    assert not gone, [p.cmdline() for p in gone]
    shown = fashion(tmp_path, "runs", "get", "cut", "-o", "json")
    settled = json.loads(shown.stdout)
    assert (settled["phase"], settled["message"]) == ("Error", "engine exited unexpectedly")
    assert {n["name"]: n["phase"] for n in settled["nodes"]} == {"hang": "Error"}
    assert record(tmp_path, "cut")["phase"] == "Error"  # written so, for every later reader


def test_a_node_process_a_dead_engine_left_is_killed_at_the_next_start_and_the_log_says_so(tmp_path: Path) -> None:
    from steps.lifeline import Owner

    engine = subprocess.Popen([sys.executable, "-c", "pass"])
    dead = Owner.of(engine.pid)
    engine.wait()
    marks = {"FASHION_PIPELINE_OWNER": str(dead), "FASHION_PIPELINE_RUN": "old-run"}
    orphan = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"], env={**os.environ, **marks}, start_new_session=True
    )
    try:
        proc = fashion(tmp_path, "run", "--file", str(counting(tmp_path)), "--name", "next")
        assert proc.returncode == 0, proc.stderr
        assert orphan.wait(timeout=10) == -signal.SIGKILL
    finally:
        orphan.kill()
        orphan.wait()
    assert f"of run old-run, left by an engine that exited (pid {dead.pid})" in proc.stderr
