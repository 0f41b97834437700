"""Crash safety, as after a power cut or an OOM kill: SIGKILL at seeded random moments, then look.

A quick pipeline run on each store (files, and a real S3 server through the MinIO client), and
`up` while webhook events and data drops arrive. After each kill: no record torn, no alias
dangling, no process of the run left, no run shown Running. After a restart every accepted event
has started exactly one run, and the next run succeeds. `runs retry` resumes a run killed during
evaluate without running fetch or train again.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
from conftest import CLI, PROMOTED_PHASES, S3Server, free_port, seed_production, write_drop

from steps.registry import Registry
from steps.storage import Store, open_store
from workflows.engine.records import RECORD_FILE, read_record
from workflows.triggers.drops import prepare_manifest, upload_drop

KILLS = 5  # each kill lands in its own fifth of a run (stratified), so five cover every step
SEED = 20261205
TOKEN = "t0ken"
# Every finished run promotes (non-inferior within 100 points), so kills land in alias changes too.
POLICY = {"min_accuracy": "0.5", "min_class_recall": "0.0", "allow_equal": "true", "tolerance": "1"}
QUICK = {"train_limit": "3000", "epochs": "1", **POLICY}
MARK = "FASHION_PIPELINE_CRASH_TEST"  # in the environment of everything a test starts, inherited by all below

# Every test here trains (kills runs mid-training, stops `up` mid-run).
pytestmark = pytest.mark.slow


def flags(values: dict[str, str]) -> list[str]:
    return [arg for key, value in values.items() for arg in ("-p", f"{key}={value}")]


def environment(tmp_path: Path, store: str, s3: S3Server | None = None) -> dict[str, str]:
    return {
        **os.environ,
        **(s3.env() if s3 else {}),
        "FASHION_PIPELINE_STORE": store,
        "FASHION_PIPELINE_WEBHOOK_TOKEN": TOKEN,
        "TERM": "dumb",
        MARK: str(tmp_path),
    }


def wait_for(condition: Callable[[], Any], what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except (OSError, ValueError, KeyError, requests.RequestException):
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def leftovers(tmp_path: Path) -> list[str]:
    """Processes a test started, directly or not, that are still alive."""
    left = []
    for process in psutil.process_iter(["pid", "environ", "cmdline", "status"]):
        try:
            if process.info["status"] == psutil.STATUS_ZOMBIE or process.pid == os.getpid():
                continue
            if (process.info["environ"] or {}).get(MARK) == str(tmp_path):
                left.append(f"{process.pid} {' '.join(process.info['cmdline'] or [])[:150]}")
        except psutil.Error:
            continue
    return left


def kill(process: subprocess.Popen[bytes], group: bool) -> None:
    """SIGKILL the engine alone (as the OOM killer does) or its whole process group (as a power cut)."""
    if group:
        os.killpg(process.pid, signal.SIGKILL)
    else:
        process.kill()
    process.wait()


def nothing_left(tmp_path: Path) -> None:
    try:
        wait_for(lambda: not leftovers(tmp_path), "every process of the killed engine to end", timeout=30)
    except AssertionError:
        left = leftovers(tmp_path)
        for line in left:
            os.kill(int(line.split()[0]), signal.SIGKILL)  # tests stop what they start, even on failure
        raise AssertionError(f"left running after the kill: {left}") from None


def runs_listed(cwd: Path, env: dict[str, str]) -> list[dict[str, Any]]:
    """What `runs list` shows."""
    proc = subprocess.run([CLI, "runs", "list", "-o", "json"], cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    records: list[dict[str, Any]] = json.loads(proc.stdout)
    return records


def runs_read(cwd: Path) -> list[dict[str, Any]]:
    """The records as `runs list` reads them (the same function), without starting a process each time."""
    return [read_record(path.parent) for path in sorted((cwd / "runs").glob(f"*/{RECORD_FILE}"))]


def check_store(store: Store) -> None:
    """Every record parses, every listed version is whole, every alias names a listed version."""
    registry = Registry(store)
    keys = store.list("")
    for key in keys:
        if key.endswith(".json"):
            json.loads(store.read_bytes(key))  # a torn record fails here
    versions = registry.versions()
    for version in versions:
        manifest = store.read_json(f"models/fashion-mnist/versions/{version}/MANIFEST.json")
        missing = [f for f in manifest["files"] if f"models/fashion-mnist/versions/{version}/{f}" not in keys]
        assert not missing, f"version {version} is listed but lacks {missing}"
        assert registry.card(version)["version"] == version
    aliases = [k for k in keys if "/aliases/" in k and "/history/" not in k and k.endswith(".json")]
    for key in aliases:
        pointer = registry.alias(key.rpartition("/")[2].removesuffix(".json"))
        assert pointer is None or pointer["version"] in versions, f"{key} names a version not listed: {pointer}"


def check_after_kill(tmp_path: Path, store: Store) -> None:
    nothing_left(tmp_path)
    check_store(store)
    records = runs_read(tmp_path)
    shown = {r["name"]: r["phase"] for r in records}
    assert not [n for n, phase in shown.items() if phase in ("Running", "Pending")], shown
    for record in records:
        if record["phase"] == "Error":
            assert record["message"] == "engine exited unexpectedly", record


def node_phase(tmp_path: Path, run: str, node: str) -> str | None:
    record = json.loads((tmp_path / "runs" / run / "workflow.json").read_text())
    return next((n["phase"] for n in record["nodes"] if n["name"] == node), None)


def kill_runs_at_random_moments(tmp_path: Path, env: dict[str, str], store: Store, duration_s: float) -> None:
    """KILLS runs, the i-th killed at a seeded random moment in the i-th of KILLS equal parts of a run."""
    rng = random.Random(SEED)
    for i in range(KILLS):
        moment = (0.03 + 0.94 * (i + rng.random()) / KILLS) * duration_s
        argv = [CLI, "run", "--name", f"killed-{i}", *flags({**QUICK, "seed": str(i)})]
        run = subprocess.Popen(
            argv, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        try:
            time.sleep(moment)
        finally:
            kill(run, group=i % 2 == 0)
        check_after_kill(tmp_path, store)


def run_to_end(tmp_path: Path, env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    proc = subprocess.run([CLI, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    return proc, time.monotonic() - started


@pytest.fixture(scope="module")
def quick_run_s(tmp_path_factory: pytest.TempPathFactory, real_mirror: Path) -> float:
    """How long a whole quick run takes on this machine: the kills are spread over it."""
    tmp_path = tmp_path_factory.mktemp("uninterrupted")
    env = environment(tmp_path, str(tmp_path / "store"))
    first, duration_s = run_to_end(tmp_path, env, "run", "--name", "uninterrupted", *flags({**QUICK, "seed": "100"}))
    assert first.returncode == 0, first.stderr[-3000:]
    return duration_s


def test_runs_killed_at_random_moments_on_a_file_store_leave_nothing_behind_and_retry_resumes(
    tmp_path: Path, quick_run_s: float
) -> None:
    env = environment(tmp_path, str(tmp_path / "store"))
    store = open_store(str(tmp_path / "store"))
    kill_runs_at_random_moments(tmp_path, env, store, quick_run_s)

    # Killed during evaluate, then retried: evaluate, gate, rollout and the exit handler run again.
    argv = [CLI, "run", "--name", "resumed", *flags({**QUICK, "seed": "101"})]
    run = subprocess.Popen(
        argv, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        wait_for(lambda: node_phase(tmp_path, "resumed", "evaluate") == "Running", "evaluate to start", 600)
        time.sleep(1.0)
    finally:
        kill(run, group=False)
    check_after_kill(tmp_path, store)
    before = {r["name"]: r for r in runs_listed(tmp_path, env)}["resumed"]
    assert before["phase"] == "Error" and before["message"] == "engine exited unexpectedly"

    retried, _ = run_to_end(tmp_path, env, "runs", "retry", "resumed", "-o", "json")
    assert retried.returncode == 0, retried.stderr[-3000:]
    after = json.loads(retried.stdout)
    nodes = {n["name"]: n for n in after["nodes"]}
    assert {name: n["phase"] for name, n in nodes.items()} == PROMOTED_PHASES
    old = {n["name"]: n for n in before["nodes"]}
    for reused in ("fetch-dataset", "train"):
        assert nodes[reused]["outputs"] == old[reused]["outputs"] and nodes[reused]["started"] == old[reused]["started"]
        assert sorted(p.name for p in (tmp_path / "runs" / "resumed" / reused).iterdir()) == ["attempt-1"]
    assert sorted(p.name for p in (tmp_path / "runs" / "resumed" / "evaluate").iterdir()) == ["attempt-1", "attempt-2"]
    assert nodes["evaluate"]["earlier_attempts"] == 1
    outputs = after["outputs"]["parameters"]
    assert outputs["decision"] == "promote" and outputs["rollout_outcome"] == "promoted"
    assert outputs["model_version"] == old["train"]["outputs"]["parameters"]["model_version"]
    assert Registry(store).alias("production")["version"] == outputs["model_version"]  # type: ignore[index]
    assert [t["phase"] for t in after["tries"]] == ["Error"]  # both tries kept

    again, _ = run_to_end(tmp_path, env, "runs", "retry", "resumed")
    assert again.returncode != 0 and again.stderr.strip().splitlines() == [
        "fashion-pipeline: error: run resumed Succeeded: there is nothing to retry (start a new run)"
    ]


def test_runs_killed_at_random_moments_on_an_s3_store_leave_no_torn_record_and_no_dangling_alias(
    tmp_path: Path, bucket: str, s3_server: S3Server, quick_run_s: float
) -> None:
    uri = f"s3://{bucket}/store"
    env = environment(tmp_path, uri, s3_server)
    store = open_store(uri)
    kill_runs_at_random_moments(tmp_path, env, store, quick_run_s * 1.2)  # S3 adds about a fifth
    last, _ = run_to_end(tmp_path, env, "run", "--name", "after-the-kills", *flags({**QUICK, "seed": "102"}))
    assert last.returncode == 0, last.stderr[-3000:]
    check_store(store)


# --- up -----------------------------------------------------------------------------------------
class Arrivals:
    """Webhook events and data drops sent while `up` lives; what was accepted is remembered."""

    def __init__(self, tmp_path: Path, store: Store, port: int, rng: random.Random) -> None:
        self.tmp_path, self.store, self.port, self.rng = tmp_path, store, port, rng
        self.accepted: list[str] = []  # run names
        self.counter = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def send_for(self, events: int, drops: int, window_s: float) -> None:
        moments = sorted(
            [(self.rng.uniform(0, window_s), "event") for _ in range(events)]
            + [(self.rng.uniform(0, window_s), "drop") for _ in range(drops)]
        )
        self._stop.clear()
        self._thread = threading.Thread(target=self._send, args=(moments,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def _send(self, moments: list[tuple[float, str]]) -> None:
        started = time.monotonic()
        for at, kind in moments:
            if self._stop.wait(max(0.0, at - (time.monotonic() - started))):
                return
            self.counter += 1
            name = f"a{self.counter}"
            if kind == "drop":
                directory = write_drop(self.tmp_path / "drops" / name, n_train=300, n_test=100, seed=self.counter)
                upload_drop(self.store, directory, prepare_manifest(directory, name, "crash test", {"epochs": "1"}))
                self.accepted.append(f"drop-{name}")  # drop.json landed: it must start one run
                continue
            body: dict[str, Any] = {"event_id": name, "train_limit": 1000, "epochs": 1, "seed": self.counter}
            try:
                answer = requests.post(
                    f"http://127.0.0.1:{self.port}/retrain",
                    json=body,
                    headers={"Authorization": f"Bearer {TOKEN}"},
                    timeout=10,
                )
            except requests.RequestException:
                continue  # not answered: the sender would try again, with the same id
            if answer.status_code == 202:
                self.accepted.append(f"retrain-{name}")


@pytest.fixture
def platform(tmp_path: Path, real_mirror: Path) -> Iterator[tuple[list[str], dict[str, str]]]:
    """`up`'s command line on a store with a model in production, and its environment."""
    env = environment(tmp_path, str(tmp_path / "store"))
    seed_production(tmp_path, env, real_mirror, "seed for the crash tests")
    server_port, webhook_port = free_port(), free_port()
    argv = [CLI, "up", "--port", str(server_port), "--webhook-port", str(webhook_port), "--drop-poll", "0.5"]
    env["CRASH_TEST_WEBHOOK_PORT"] = str(webhook_port)
    yield [*argv, *flags(POLICY)], env
    for line in leftovers(tmp_path):
        os.kill(int(line.split()[0]), signal.SIGKILL)


def webhook_up(port: int) -> bool:
    return requests.get(f"http://127.0.0.1:{port}/runs/none", timeout=2).status_code == 404


def test_up_killed_while_events_and_drops_arrive_loses_none_and_runs_none_twice(
    tmp_path: Path, platform: tuple[list[str], dict[str, str]]
) -> None:
    argv, env = platform
    port = int(env["CRASH_TEST_WEBHOOK_PORT"])
    store = open_store(str(tmp_path / "store"))
    rng = random.Random(SEED)
    arrivals = Arrivals(tmp_path, store, port, rng)
    logs = []
    for i in range(KILLS):
        log = tmp_path / f"up-{i}.log"
        logs.append(log)
        with open(log, "wb") as out:
            up = subprocess.Popen(
                argv, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            wait_for(lambda: webhook_up(port), "the webhook", timeout=120)
            moment = rng.uniform(0.5, 8.0)
            # The last life gets more than one run can take: some arrivals never start before the kill.
            last = i == KILLS - 1
            arrivals.send_for(events=2 if last else i % 2, drops=1 if last else 1 - i % 2, window_s=moment)
            time.sleep(moment)
        finally:
            kill(up, group=i % 2 == 1)
            arrivals.stop()
        check_after_kill(tmp_path, store)

    # The last start: every accepted event and landed drop runs, once; what a kill cut short stays Error.
    final = tmp_path / "up-final.log"
    with open(final, "wb") as out:
        up = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: webhook_up(port), "the webhook", timeout=120)

        def all_ended() -> bool:
            shown = {r["name"]: r["phase"] for r in runs_read(tmp_path)}
            return all(shown.get(name) in ("Succeeded", "Failed", "Error") for name in arrivals.accepted)

        wait_for(all_ended, f"the runs of {len(arrivals.accepted)} accepted arrivals to end", timeout=1200)
        for record in runs_read(tmp_path):  # the webhook's GET /runs/NAME agrees with the records
            shown = requests.get(f"http://127.0.0.1:{port}/runs/{record['name']}", timeout=10).json()
            assert (shown["phase"], shown["message"]) == (record["phase"], record["message"]), record["name"]
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(timeout=180)
        finally:
            if up.poll() is None:
                kill(up, group=True)
    nothing_left(tmp_path)
    check_store(store)

    text = "".join(p.read_text(errors="replace") for p in [*logs, final])
    assert "could not run" not in text  # a second start of a run that already exists is refused: never happens
    records = {r["name"]: r for r in runs_listed(tmp_path, env)}
    assert set(arrivals.accepted) <= set(records), set(arrivals.accepted) - set(records)
    assert len(arrivals.accepted) >= KILLS // 2, arrivals.accepted
    for name in arrivals.accepted:
        record = records[name]
        assert "tries" not in record, f"{name} ran more than once"
        if record["phase"] == "Error":
            assert record["message"] == "engine exited unexpectedly", record
    finished = [name for name in arrivals.accepted if records[name]["phase"] != "Error"]
    assert finished, "no accepted arrival ran to its end after the restarts"
