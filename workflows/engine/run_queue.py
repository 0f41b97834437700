"""The local run queue: runs of the pipeline one at a time, in submission order, on a worker thread.

The webhook receiver, the drop watcher and `up`'s schedule all submit to it; each run's `trigger`
argument records who started it, with which payload and which operator values.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steps.errors import UserError
from workflows import trigger
from workflows.engine.manifest import resolve_parameters
from workflows.engine.records import ENGINE_GONE, RECORD_FILE, read_record
from workflows.engine.scheduler import Engine
from workflows.run_summary import lines, summarise

log = logging.getLogger(__name__)


@dataclass
class _Job:
    name: str
    parameters: dict[str, str]
    retry: bool = False  # run it again from its failed nodes (`runs retry`), with its recorded arguments


class RunQueue:
    """Runs the pipeline one run at a time, in submission order, on a worker thread.

    `defaults` are the embedded platform's arguments; `operator` the `-p` values of whoever started
    the queue (`launcher`), checked here like `run -p` and applied to every run after the defaults.
    """

    def __init__(
        self,
        manifest: Callable[[], dict[str, Any]],
        runs_dir: Path,
        defaults: dict[str, str],
        operator: Mapping[str, str] | None = None,
        launcher: str = "fashion-pipeline webhook",
    ) -> None:
        self.operator = dict(operator or {})
        if trigger.ARGUMENT in self.operator:
            raise UserError(f"-p {trigger.ARGUMENT}: set by the launcher (it records how each run started)")
        resolve_parameters(manifest(), {**defaults, **self.operator})
        self.manifest = manifest
        self.runs_dir = runs_dir
        self.defaults = defaults
        self.launcher = launcher
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._pending: dict[str, _Job] = {}
        self._lock = threading.Lock()
        self._engine: Engine | None = None
        self._closing = False
        self._worker = threading.Thread(target=self._work, name="run-queue", daemon=True)
        self._worker.start()

    def submit(
        self,
        name: str,
        parameters: dict[str, str],
        by: str,
        payload: Mapping[str, Any] | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """Queue a run; `by`, `payload` (the event's body) and `details` go into its `trigger` argument."""
        started = trigger.summary(by, self.launcher, payload=payload, operator=self.operator, **(details or {}))
        job = _Job(name, {**self.defaults, **self.operator, **parameters, trigger.ARGUMENT: started})
        with self._lock:
            self._pending[name] = job
        self._jobs.put(job)
        log.info("queued %s (%d waiting)", name, self._jobs.qsize())

    def retry(self, name: str) -> None:
        """Queue `runs retry NAME`: the run again from its failed or interrupted nodes."""
        record = self.status(name) or {}
        job = _Job(name, dict(record.get("parameters", {})), retry=True)
        with self._lock:
            self._pending[name] = job
        self._jobs.put(job)
        log.info("queued a retry of %s", name)

    def interrupted(self) -> list[str]:
        """Runs an engine's crash cut short (Error, `engine exited unexpectedly`), oldest first."""
        found = []
        for directory in sorted(self.runs_dir.glob(f"*/{RECORD_FILE}")):
            try:
                record = read_record(directory.parent)
            except (OSError, ValueError):
                continue
            if record.get("phase") == "Error" and record.get("message") == ENGINE_GONE:
                found.append((record.get("started") or "", record["name"]))
        return [name for _, name in sorted(found)]

    def busy(self) -> bool:
        with self._lock:
            return bool(self._pending) or self._engine is not None

    def status(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            if name in self._pending:
                return {"name": name, "phase": "Pending", "parameters": self._pending[name].parameters}
            if self._engine is not None and self._engine.run.name == name:
                return self._engine.run.record()
        directory = self.runs_dir / name
        return read_record(directory) if (directory / RECORD_FILE).is_file() else None

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                if job.retry:
                    engine = Engine.retry(self.runs_dir, job.name)
                else:
                    engine = Engine(self.manifest(), self.runs_dir, job.parameters, name=job.name)
                with self._lock:
                    if self._closing:  # its event stays in the event log: the next start queues it again
                        continue
                    self._pending.pop(job.name, None)
                    self._engine = engine
                log.info("running %s", job.name)
                result = engine.execute()
                for line in lines(summarise(result.record(), result.directory)):
                    log.info("%s", line)
            except Exception as exc:  # one bad run must not stop the queue
                log.error("%s could not run: %s", job.name, exc)
            finally:
                with self._lock:
                    self._pending.pop(job.name, None)
                    self._engine = None

    def close(self, reason: str = "the local platform is shutting down", timeout_s: float = 120) -> bool:
        """Stop the running workflow (its exit handler still runs) and the worker; start nothing more.

        True if the worker ended within `timeout_s`. Queued runs are dropped here: their events are
        still in the event log, and the next start queues them again.
        """
        with self._lock:
            self._closing = True
            engine = self._engine
            self._pending.clear()
        if engine is not None:
            log.info("stopping %s: %s", engine.run.name, reason)
            engine.stop(reason)
        self._jobs.put(None)
        self._worker.join(timeout_s)
        return not self._worker.is_alive()

    def terminate(self, reason: str) -> None:
        """Like `argo terminate` on the running workflow: no exit handler."""
        with self._lock:
            self._closing = True
            engine = self._engine
        if engine is not None:
            engine.terminate(reason)
