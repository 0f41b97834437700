"""What production serves, summarised: the inference log the model server writes and `monitor` reads.

Each sampled request leaves one record per image: when, which version and role answered, the predicted
class and its probability, and three input statistics (pixel mean, standard deviation and the fraction
of dark pixels, all on the 0..255 scale). No raw images unless the operator asks (`images=True`).

Records go to the store in batches, each batch one JSON Lines object written once under
`monitoring/<model>/<version>/<day>/` (the store publishes whole objects, so a reader never sees half a
batch; a line that does not parse is skipped, named and counted all the same). Logging never slows
serving: a request only puts its arrays on a bounded queue, and a full queue drops (and counts) rather
than blocks. The writer thread does the arithmetic and the writes; while the store is down it keeps what
it has (bounded too, oldest dropped and counted) and tries again.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import random
import re
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from steps.errors import UserError
from steps.storage import Store

log = logging.getLogger(__name__)

PREFIX = "monitoring"
DARK_PIXEL = 32  # 0..255: a pixel under this is dark (Fashion-MNIST's background is 0)
FIELDS = ("t", "version", "role", "class_id", "probability", "mean", "std", "dark")


def version_prefix(model: str, version: str) -> str:
    return f"{PREFIX}/{model}/{version}"


def image_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image of [N,28,28] raw pixels: mean, standard deviation, fraction of dark pixels."""
    flat = np.asarray(images, np.float32).reshape(len(images), -1)
    return flat.mean(axis=1), flat.std(axis=1), (flat < DARK_PIXEL).mean(axis=1)


def summarise(
    at: float, version: str, role: str, images: np.ndarray, probabilities: np.ndarray, class_ids: np.ndarray
) -> list[dict[str, Any]]:
    means, stds, dark = image_stats(images)
    top = np.asarray(probabilities)[np.arange(len(class_ids)), np.asarray(class_ids)]
    return [
        {
            "t": round(at, 3),
            "version": version,
            "role": role,
            "class_id": int(c),
            "probability": round(float(p), 5),
            "mean": round(float(m), 3),
            "std": round(float(s), 3),
            "dark": round(float(d), 4),
        }
        for c, p, m, s, d in zip(class_ids, top, means, stds, dark, strict=True)
    ]


@dataclass
class Counters:
    requests_sampled: int = 0
    records_written: int = 0
    batches_written: int = 0
    dropped_requests: int = 0  # the queue was full: not logged, never waited for
    dropped_records: int = 0  # the store stayed down longer than the backlog holds
    write_errors: int = 0


class InferenceLog:
    """The server's writer: `record` from the request path (never blocks), batches written by a thread."""

    def __init__(
        self,
        store: Store,
        model: str,
        sample_rate: float,
        *,
        batch_records: int = 512,
        flush_s: float = 5.0,
        queue_requests: int = 2048,
        backlog_records: int = 100_000,
        images: bool = False,
        retry_s: float = 2.0,
    ) -> None:
        if not 0 <= sample_rate <= 1:
            raise ValueError(f"sample rate {sample_rate} is not in [0, 1]")
        self.store, self.model, self.sample_rate = store, model, sample_rate
        self.batch_records, self.flush_s, self.retry_s = batch_records, flush_s, retry_s
        self.backlog_records, self.images = backlog_records, images
        self.counters = Counters()
        self._queue: queue.Queue[tuple[Any, ...] | None] = queue.Queue(maxsize=queue_requests)
        self._pending: dict[str, list[dict[str, Any]]] = {}
        self._random = random.Random()
        self._writer = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._sequence = 0
        self._retry_at = 0.0
        self._thread = threading.Thread(target=self._run, name="inference-log", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def record(
        self, version: str, role: str, images: np.ndarray, probabilities: np.ndarray, class_ids: np.ndarray
    ) -> None:
        """One answered request, if sampled: its arrays are queued, nothing is computed or written here."""
        if self.sample_rate <= 0 or self._random.random() >= self.sample_rate:
            return
        try:
            self._queue.put_nowait((time.time(), version, role, images, probabilities, class_ids))
            self.counters.requests_sampled += 1
        except queue.Full:
            self.counters.dropped_requests += 1

    def stop(self, timeout_s: float = 10.0) -> None:
        """Write what is queued and pending (as far as the store lets within `timeout_s`), then end."""
        if not self._thread.is_alive():
            return
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            pass
        self._thread.join(timeout_s)
        c = self.counters
        log.info(
            "inference log: %d records in %d batches; dropped %d requests (queue full), %d records (store down)",
            c.records_written,
            c.batches_written,
            c.dropped_requests,
            c.dropped_records,
        )

    def _run(self) -> None:
        last_flush = time.monotonic()
        while True:
            try:
                item = self._queue.get(timeout=max(0.05, self.flush_s - (time.monotonic() - last_flush)))
            except queue.Empty:
                item = ()
            if item is None:
                self._flush()
                return
            if item:
                try:
                    self._add(item)
                except Exception:  # one bad item is counted, never the end of the writer
                    self.counters.dropped_requests += 1
                    log.exception("inference log: a request could not be summarised")
            full = any(len(records) >= self.batch_records for records in self._pending.values())
            due = full or time.monotonic() - last_flush >= self.flush_s
            if due and time.monotonic() >= self._retry_at:
                self._flush()
                last_flush = time.monotonic()

    def _add(self, item: tuple[Any, ...]) -> None:
        at, version, role, images, probabilities, class_ids = item
        records = summarise(at, version, role, images, probabilities, class_ids)
        if self.images:
            for record, image in zip(records, np.asarray(images, np.uint8), strict=True):
                record["image"] = image.ravel().tolist()
        pending = self._pending.setdefault(version, [])
        pending.extend(records)
        over = min(sum(len(r) for r in self._pending.values()) - self.backlog_records, len(pending))
        if over > 0:  # the store has been away a while: the oldest of this version go, counted
            del pending[:over]
            self.counters.dropped_records += over

    def _flush(self) -> None:
        """Write what is pending; on a failure keep it and wait `retry_s` before the next try (the queue drains on)."""
        for version in list(self._pending):
            records = self._pending[version]
            while records:
                try:
                    self._write(version, records[: self.batch_records])
                except Exception as exc:  # the store is down or refusing: keep the records, try later
                    self.counters.write_errors += 1
                    if self.counters.write_errors == 1 or self.counters.write_errors % 100 == 0:
                        log.warning("inference log: cannot write to %s (%s); keeping records", self.store.uri, exc)
                    self._retry_at = time.monotonic() + self.retry_s
                    return
                del records[: self.batch_records]
            del self._pending[version]

    def _write(self, version: str, batch: list[dict[str, Any]]) -> None:
        self._sequence += 1
        day = datetime.now(UTC).strftime("%Y%m%d")
        stamp = datetime.now(UTC).strftime("%H%M%S")
        key = f"{version_prefix(self.model, version)}/{day}/{stamp}-{self._writer}-{self._sequence:06d}.jsonl"
        body = "".join(json.dumps(record, separators=(",", ":")) + "\n" for record in batch).encode()
        self.store.write_bytes(key, body)
        self.counters.records_written += len(batch)
        self.counters.batches_written += 1


# ---------------------------------------------------------------------------------------------
# Reading a window back
# ---------------------------------------------------------------------------------------------


@dataclass
class Window:
    """The records of one version served in [start, end), and what could not be read."""

    version: str
    start: float
    end: float
    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "<key>: <why>" for each unreadable file or line
    other_versions: int = 0  # records under this version's folder that name another version
    files_read: int = 0  # batches read (those written before the window are not)

    def column(self, name: str) -> np.ndarray:
        return np.asarray([record[name] for record in self.records], np.float64)


def _days(start: float, end: float) -> Iterable[str]:
    day = datetime.fromtimestamp(start, UTC).date()
    last = datetime.fromtimestamp(end, UTC).date()
    while day <= last:
        yield day.strftime("%Y%m%d")
        day = datetime.fromordinal(day.toordinal() + 1).date()


# The writer names a batch by the second it wrote it (`InferenceLog._write`): HHMMSS-<writer>-<n>.jsonl.
_WRITTEN = re.compile(r"/(\d{6})-[^/]*\.jsonl$")


def _written_at(day: str, key: str) -> float | None:
    """When the writer wrote the batch `key` of `day`, to the second (None: not a name it gives)."""
    match = _WRITTEN.search(key)
    if match is None:
        return None
    try:
        return datetime.strptime(day + match[1], "%Y%m%d%H%M%S").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def read_window(store: Store, model: str, version: str, start: float, end: float) -> Window:
    """Every record of `version` with start <= t < end; corrupt files and lines are skipped and named.

    A batch holds records up to the second it was written, so one written before `start` is not read:
    a check of the last minutes reads the day's last files, not the whole day.
    """
    window = Window(version, start, end)
    for day in _days(start, end):
        for key in store.list(f"{version_prefix(model, version)}/{day}"):
            if not key.endswith(".jsonl"):
                continue
            written = _written_at(day, key)
            if written is not None and written < math.floor(start) - 1:  # a second's margin: `t` is rounded
                continue
            window.files_read += 1
            try:
                text = store.read_bytes(key).decode()
            except (OSError, UnicodeDecodeError, UserError) as exc:  # UserError: gone since it was listed
                window.skipped.append(f"{key}: unreadable ({exc})")
                continue
            for number, line in enumerate(text.splitlines(), 1):
                try:
                    record = json.loads(line)
                    valid = isinstance(record, dict) and all(name in record for name in FIELDS)
                    at = float(record["t"]) if valid else 0.0
                except (ValueError, TypeError):
                    valid = False
                if not valid:
                    window.skipped.append(f"{key}:{number}: not an inference record")
                    continue
                if record["version"] != version:
                    window.other_versions += 1
                elif start <= at < end:
                    window.records.append(record)
    return window


# ---------------------------------------------------------------------------------------------
# The cluster's route in: KServe's logger posts each request and response as a CloudEvent
# ---------------------------------------------------------------------------------------------

REQUEST_EVENT = "org.kubeflow.serving.inference.request"
RESPONSE_EVENT = "org.kubeflow.serving.inference.response"


class LogSink:
    """Pairs KServe's logger events by their id into the same records `serve --log-sample-rate` writes.

    The InferenceService's logger URL names the version its revision serves (`?version=`): the
    predictor's own answers (TF Serving's) name none. A half-pair waits at most `pair_s` seconds, and
    the halves waiting are at most `pending` events and `pending_bytes` bytes (the oldest go first):
    a sink whose partner events stopped coming keeps a bounded memory, well inside its pod's limit
    (argo/monitoring.yaml). What cannot be paired or decoded is counted and logged, never raised to
    the agent.
    """

    def __init__(
        self, inference_log: InferenceLog, pair_s: float = 60.0, pending: int = 10_000, pending_bytes: int = 64 << 20
    ) -> None:
        self.log = inference_log
        self.pair_s, self.pending, self.pending_bytes = pair_s, pending, pending_bytes
        self._halves: dict[str, tuple[float, str, bytes]] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        self.unpaired = 0
        self.undecodable = 0

    def accept(self, event_id: str, event_type: str, version: str, body: bytes) -> None:
        from steps.serving.protocol import CODECS, BadRequest, BadResponse, Protocol

        if event_type not in (REQUEST_EVENT, RESPONSE_EVENT) or not event_id:
            self._undecodable(f"an event of type {event_type!r} with id {event_id!r}")
            return
        now = time.monotonic()
        with self._lock:
            other = self._halves.pop(event_id, None)
            if other is not None:
                self._bytes -= len(other[2])
            if other is None or other[1] == event_type:
                self._halves[event_id] = (now, event_type, body)
                self._bytes += len(body)
                self._expire(now)
                return
        request, response = (other[2], body) if event_type == RESPONSE_EVENT else (body, other[2])
        v1 = CODECS[Protocol.V1]
        try:
            images = v1.images(json.loads(request))
            answer = v1.from_bytes(response, {})
        except (ValueError, BadRequest, BadResponse) as exc:
            self._undecodable(f"event {event_id}: {exc}")
            return
        if len(images) != len(answer.class_ids):  # halves of two requests that shared an id
            self._undecodable(f"event {event_id}: {len(images)} images but {len(answer.class_ids)} answers")
            return
        self.log.record(version, "served", images, answer.probabilities, answer.class_ids)

    def _undecodable(self, what: str) -> None:
        self.undecodable += 1
        if self.undecodable == 1 or self.undecodable % 100 == 0:
            log.warning("log sink: events not recorded so far: %d; the latest: %s", self.undecodable, what)

    def _expire(self, now: float) -> None:
        """Drop the halves that waited too long, then the oldest while there are too many or too large."""
        dropped = 0
        for key, (at, _, body) in list(self._halves.items()):  # oldest first (insertion order)
            over = len(self._halves) > self.pending or self._bytes > self.pending_bytes
            if now - at <= self.pair_s and not over:
                break
            del self._halves[key]
            self._bytes -= len(body)
            dropped += 1
        if dropped:
            before = self.unpaired
            self.unpaired += dropped
            if before == 0 or before // 100 != self.unpaired // 100:
                log.warning(
                    "log sink: events that found no partner so far: %d (KServe's logger sends both halves)",
                    self.unpaired,
                )
