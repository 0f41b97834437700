"""The inference log and the drift measures, without a server: never blocking, surviving the store, honest reads."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from steps.drift import DriftPolicy, Reference, ks_statistic, measure, psi
from steps.monitoring import (
    REQUEST_EVENT,
    RESPONSE_EVENT,
    InferenceLog,
    LogSink,
    Window,
    image_stats,
    read_window,
    version_prefix,
)
from steps.storage import FileStore

MODEL = "fashion-mnist"


class FlakyStore(FileStore):
    """A real file store whose writes can be made to fail (an outage) or to hang (a store that stalls)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.down = False
        self.stalled = threading.Event()  # set: writes go through
        self.writing = threading.Event()  # set once a write has begun

    def write_bytes(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> None:
        self.writing.set()
        self.stalled.wait()
        if self.down:
            raise OSError("connection refused")
        super().write_bytes(key, data, metadata)


def garments(n: int, seed: int = 0) -> np.ndarray:
    """Fashion-MNIST-like images: a bright blob on a black background."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28), np.float32)
    images[:, 6:22, 8:20] = rng.uniform(120, 230, (n, 16, 12))
    return images


def answers(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    probabilities = np.random.default_rng(seed).dirichlet(np.ones(10) * 0.1, n).astype(np.float32)
    return probabilities, probabilities.argmax(axis=1)


def test_a_logged_request_is_read_back_with_its_summary_and_no_image(tmp_path: Path) -> None:
    store = FlakyStore(tmp_path)
    store.stalled.set()
    inference_log = InferenceLog(store, MODEL, 1.0, flush_s=0.1)
    inference_log.start()
    images = garments(3)
    probabilities, class_ids = answers(3)
    inference_log.record("v1", "production", images, probabilities, class_ids)
    inference_log.stop()

    window = read_window(store, MODEL, "v1", time.time() - 60, time.time() + 1)
    assert [r["class_id"] for r in window.records] == class_ids.tolist()
    means, stds, dark = image_stats(images)
    assert window.column("std") == pytest.approx(stds, abs=1e-3)
    assert window.column("mean") == pytest.approx(means, abs=1e-3)
    assert window.column("dark") == pytest.approx(dark, abs=1e-4)
    assert window.column("probability") == pytest.approx(probabilities.max(axis=1), abs=1e-5)
    assert {r["role"] for r in window.records} == {"production"} and "image" not in window.records[0]
    assert inference_log.counters.records_written == 3 and window.skipped == []


def test_a_stalled_store_never_blocks_a_request_and_drops_are_counted(tmp_path: Path) -> None:
    store = FlakyStore(tmp_path)  # every write hangs until released
    inference_log = InferenceLog(store, MODEL, 1.0, flush_s=0.05, queue_requests=8)
    inference_log.start()
    probabilities, class_ids = answers(1)
    image = garments(1)
    inference_log.record("v1", "production", image, probabilities, class_ids)
    assert store.writing.wait(10)  # the writer is stuck in the store from here on
    started = time.perf_counter()
    for _ in range(200):
        inference_log.record("v1", "production", image, probabilities, class_ids)
    took = time.perf_counter() - started

    assert took < 1.0  # 200 calls returned while the writer was stuck (a put each, no waiting)
    assert inference_log.counters.dropped_requests == 200 - 8  # all but what the queue holds
    store.stalled.set()
    inference_log.stop()
    assert inference_log.counters.records_written + inference_log.counters.dropped_requests == 201


def test_a_store_outage_keeps_the_records_until_it_is_back_and_bounds_the_backlog(tmp_path: Path) -> None:
    store = FlakyStore(tmp_path)
    store.stalled.set()
    store.down = True
    inference_log = InferenceLog(store, MODEL, 1.0, flush_s=0.05, batch_records=10, backlog_records=30, retry_s=0.05)
    inference_log.start()
    probabilities, class_ids = answers(10)
    for _ in range(5):
        inference_log.record("v1", "production", garments(10), probabilities, class_ids)
        time.sleep(0.1)
    assert inference_log.counters.write_errors >= 1 and inference_log.counters.records_written == 0
    store.down = False
    deadline = time.monotonic() + 10
    while inference_log.counters.records_written < 30 and time.monotonic() < deadline:
        time.sleep(0.05)
    inference_log.stop()

    counters = inference_log.counters
    assert counters.records_written == 30 and counters.dropped_records == 20  # 50 logged, 30 kept
    assert len(read_window(store, MODEL, "v1", 0, time.time() + 1).records) == 30


def test_corrupt_and_partial_files_are_skipped_named_and_counted(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    now = time.time()
    day = time.strftime("%Y%m%d", time.gmtime(now))
    good = {"t": now, "version": "v1", "role": "production", "class_id": 3, "probability": 0.9}
    good |= {"mean": 70.0, "std": 80.0, "dark": 0.5}
    prefix = f"{version_prefix(MODEL, 'v1')}/{day}"
    store.write_bytes(f"{prefix}/a.jsonl", (json.dumps(good) + "\n" + '{"t": 1, "versi').encode())
    store.write_bytes(f"{prefix}/b.jsonl", b"\xff\xfe not text")
    store.write_bytes(f"{prefix}/c.jsonl", (json.dumps({**good, "version": "v2"}) + "\n").encode())

    window = read_window(store, MODEL, "v1", now - 60, now + 1)
    assert len(window.records) == 1 and window.other_versions == 1
    skipped = sorted(s.split("/")[-1] for s in window.skipped)
    assert skipped[0] == "a.jsonl:2: not an inference record"
    assert skipped[1].startswith("b.jsonl: unreadable ('utf-8' codec can't decode")
    assert len(skipped) == 2


def test_a_window_reads_only_the_batches_written_since_it_began(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    start = 1_780_000_000.0  # 2026-05-28 20:26:40 UTC
    day, prefix = "20260528", f"{version_prefix(MODEL, 'v1')}/20260528"
    record = {
        "version": "v1",
        "role": "production",
        "class_id": 3,
        "probability": 0.9,
        "mean": 7,
        "std": 8,
        "dark": 0.5,
    }
    # Written an hour before the window: not read, however unreadable it would be.
    store.write_bytes(f"{prefix}/192640-w1-000001.jsonl", b"\xff not even text")
    # Written inside the window, and late: a batch the writer kept while the store was down holds older records.
    store.write_bytes(f"{prefix}/202641-w1-000002.jsonl", (json.dumps({**record, "t": start + 1}) + "\n").encode())
    late = [json.dumps({**record, "t": start - 5}), json.dumps({**record, "t": start + 2})]
    store.write_bytes(f"{prefix}/203000-w1-000003.jsonl", ("\n".join(late) + "\n").encode())
    store.write_bytes(f"{prefix}/notes.jsonl", (json.dumps({**record, "t": start + 3}) + "\n").encode())  # any name

    window = read_window(store, MODEL, "v1", start, start + 600)
    assert sorted(r["t"] for r in window.records) == [start + 1, start + 2, start + 3]
    assert window.files_read == 3 and window.skipped == []
    assert day == time.strftime("%Y%m%d", time.gmtime(start))


def _halves(images: np.ndarray) -> tuple[bytes, bytes]:
    """A V1 request and its answer, as KServe's logger posts them."""
    from steps.serving.protocol import CODECS, Protocol

    v1 = CODECS[Protocol.V1]
    probabilities, class_ids = answers(len(images))
    return v1.to_bytes(images), json.dumps(v1.respond(probabilities, class_ids)).encode()


def test_the_log_sink_keeps_its_waiting_halves_within_a_byte_bound_oldest_out_first(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inference_log = InferenceLog(FileStore(tmp_path), MODEL, 1.0, flush_s=0.05)
    request, response = _halves(garments(4))
    sink = LogSink(inference_log, pending_bytes=3 * len(request))
    inference_log.start()
    try:
        for n in range(5):  # requests whose answers are late: only the newest three fit
            sink.accept(f"id-{n}", REQUEST_EVENT, "v1", request)
        assert sink.unpaired == 2 and sink._bytes == 3 * len(request)
        sink.accept("id-0", RESPONSE_EVENT, "v1", response)  # its request was dropped: this half waits now
        sink.accept("id-4", RESPONSE_EVENT, "v1", response)  # paired: four records
        sink.accept("id-9", "org.example.other", "v1", b"{}")
    finally:
        inference_log.stop()
    assert inference_log.counters.records_written == 4
    assert sink.unpaired == 3 and sink.undecodable == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings[0] == "log sink: events that found no partner so far: 1 (KServe's logger sends both halves)"
    assert warnings[-1] == (
        "log sink: events not recorded so far: 1; the latest: an event of type 'org.example.other' with id 'id-9'"
    )
    assert len(warnings) == 2  # the first of each, then one every hundred


def _reference(n: int = 2000) -> Reference:
    means, stds, dark = image_stats(garments(n, seed=1))
    return Reference("digest", np.full(10, 0.1), {"mean": means, "std": stds, "dark": dark})


def _window(images: np.ndarray, class_ids: np.ndarray, probability: float = 0.95) -> Window:
    means, stds, dark = image_stats(images)
    window = Window("v1", 0.0, 3600.0)
    for c, m, s, d in zip(class_ids, means, stds, dark, strict=True):
        window.records.append(
            {"t": 1.0, "version": "v1", "role": "production", "class_id": int(c), "probability": probability}
            | {"mean": float(m), "std": float(s), "dark": float(d)}
        )
    return window


def test_the_same_distribution_does_not_drift_and_a_shifted_one_does_saying_which_measure() -> None:
    policy = DriftPolicy()
    reference = _reference()
    balanced = np.arange(1000) % 10

    same: dict[str, Any] = measure(_window(garments(1000, seed=2), balanced), reference, policy)
    inverted = measure(_window(255 - garments(1000, seed=3), balanced), reference, policy)
    one_class = measure(_window(garments(1000, seed=4), np.full(1000, 7)), reference, policy)
    unsure = measure(_window(garments(1000, seed=5), balanced, probability=0.4), reference, policy)

    assert same["drifted"] is False and same["reason"] == "no measure crossed its threshold"
    assert inverted["drifted"] is True and "ks_mean" in inverted["reason"] and "ks_dark" in inverted["reason"]
    assert one_class["drifted"] is True and one_class["reason"].startswith("drift: class_psi ")
    assert unsure["drifted"] is True and "low_confidence_rate 1.000 > 0.3" in unsure["reason"]
    assert same["window_id"] == inverted["window_id"]  # the same window, whatever it holds


def test_a_thin_window_gives_no_verdict_and_says_why() -> None:
    report = measure(_window(garments(20), np.arange(20) % 10), _reference(), DriftPolicy())
    assert report["drifted"] is None
    assert report["reason"] == "20 records of v1 in the window, fewer than 200"


def test_psi_and_ks_behave_as_their_definitions() -> None:
    share = np.full(10, 0.1)
    assert psi(share, share) == 0
    assert psi(share, np.eye(10)[3]) > 2
    x = np.linspace(0, 1, 500)
    assert ks_statistic(x, x) == 0
    assert ks_statistic(x, x + 2) == 1


def test_a_model_whose_card_names_no_training_data_is_a_one_line_reason() -> None:
    from steps.drift import check_reference
    from steps.errors import UserError

    with pytest.raises(UserError, match=r"^model v9 has no training dataset on its card: nothing to compare with$"):
        check_reference({"version": "v9", "dataset": {}})
    assert check_reference({"dataset": {"uri": "s3://b/d", "digest": "abc"}}) == ("s3://b/d", "abc", None)


def test_the_lineage_keeps_what_an_event_said_it_was_for() -> None:
    from steps.dataset import FetchResult
    from steps.lineage import lineage_record

    fetched = FetchResult("s3://b/d", "abc", "store", True, True, {"train": 1, "test": 1})
    drift = {"by": "webhook", "via": "sensor/fashion-retrain", "payload": {"event_id": "drift-1", "reason": "drift x"}}
    record = lineage_record(fetched, None, "retrain-drift-1", drift)
    assert record["trigger"] == {"by": "webhook", "via": "sensor/fashion-retrain", "reason": "drift x"}
    assert "reason" not in lineage_record(fetched, None, "w", {"by": "schedule", "via": "cron"})["trigger"]


def test_the_drift_check_and_the_log_sink_run_with_least_privilege_and_the_slim_sink() -> None:
    import yaml

    from workflows.triggers import drift

    repo = Path(__file__).resolve().parents[2]
    documents = [d for d in yaml.safe_load_all((repo / "argo" / "rbac.yaml").read_text()) if d]
    cron = drift.check_cron()
    account = cron["spec"]["workflowSpec"]["serviceAccountName"]
    [binding] = [d for d in documents if d["kind"] == "RoleBinding" and d["subjects"][0]["name"] == account]
    [role] = [d for d in documents if d["kind"] == "Role" and d["metadata"]["name"] == binding["roleRef"]["name"]]
    assert role["rules"] == [
        {"apiGroups": ["argoproj.io"], "resources": ["workflowtaskresults"], "verbs": ["create", "patch"]}
    ]
    [template] = cron["spec"]["workflowSpec"]["templates"]
    env = {e["name"]: e for e in template["container"]["env"]}
    assert env["FASHION_PIPELINE_WEBHOOK_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "fashion-pipeline-webhook",
        "key": "token",
    }
    assert {a["name"] for a in template["outputs"]["artifacts"]} == {"drift", "drift-plot"}
    sink = {d["kind"]: d for d in drift.log_sink_manifests()}
    assert sink["ServiceAccount"]["automountServiceAccountToken"] is False
    assert sink["Deployment"]["spec"]["template"]["spec"]["containers"][0]["image"].endswith("-slim")
    assert sink["Service"]["metadata"]["name"] == "fashion-log-sink"
