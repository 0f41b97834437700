"""Drift as a trigger: `up` checks the production model's served traffic on a schedule and retrains once per episode.

Each check measures the last window of the inference log against the production version's training
data (steps/drift.py) with the operator's `DriftPolicy`; events cannot set it. A drifted check opens an
episode, named by the id of the window that opened it: its run is `drift-<window id>`, written once to
the store's drift log (`events/drift/<version>/<window id>.json`), so later checks of the same episode,
a restart, or a second `up` on the same store start nothing more. The episode stays open while checks
keep finding drift and closes at the first check that does not; the next drift is a new episode. The
run's `trigger` names the drift report, and so does its lineage.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from steps.drift import DriftPolicy, check_drift
from steps.errors import UserError
from steps.registry import Registry
from workflows.engine import RunQueue
from workflows.triggers.base import WriteOnceLog

log = logging.getLogger(__name__)

DRIFT_LOG = "events/drift"
RUN_PREFIX = "drift-"
DEFAULT_CHECK_S = 600.0
OPEN = "open.json"


def run_name(window_id: str) -> str:
    return f"{RUN_PREFIX}{window_id}"


class DriftWatcher:
    """`up`'s drift trigger: a check every `check_s` seconds while it runs."""

    def __init__(
        self, registry: Registry, runs: RunQueue, policy: DriftPolicy | None = None, check_s: float = DEFAULT_CHECK_S
    ) -> None:
        self.registry = registry
        self.runs = runs
        self.policy = policy or DriftPolicy()
        self.check_s = check_s
        self.log = WriteOnceLog(registry.store, DRIFT_LOG)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="drift", daemon=True)

    def describe(self) -> str:
        return (
            f"drift: the production model's last {self.policy.window_s:g} s of traffic checked every {self.check_s:g} s"
        )

    def requeue_unstarted(self) -> int:
        count = 0
        for record in self.log.read_all(suffix=".json"):
            if "run" in record and self.runs.status(record["run"]) is None:
                self._submit(record)
                count += 1
        return count

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=60)

    def _loop(self) -> None:
        while not self._stop.wait(self.check_s):
            try:
                self.check()
            except UserError as exc:  # nothing served yet, no training data: say why, keep watching
                log.info("drift check: %s", exc)
            except Exception:
                log.exception("drift check failed; trying again in %g s", self.check_s)

    def check(self, end: float | None = None) -> dict[str, Any]:
        """One check of the production version; queues `drift-<window id>` if it opens an episode."""
        production = self.registry.alias("production")
        if production is None:
            raise UserError("no production model: nothing is served to check")
        version = production["version"]
        with tempfile.TemporaryDirectory(prefix="drift-") as out:
            report = check_drift(self.registry, version, time.time() if end is None else end, self.policy, Path(out))
        episode_key = f"{version}/{OPEN}"
        episode = self.registry.store.read_json(f"{DRIFT_LOG}/{episode_key}") if self.log.exists(episode_key) else {}
        if report["drifted"] is None:
            log.info("drift check of %s: no verdict (%s)", version, report["reason"])
        elif not report["drifted"]:
            if episode.get("open"):
                log.info("drift episode %s of %s is over: %s", episode["window_id"], version, report["reason"])
                self.registry.store.replace_json(f"{DRIFT_LOG}/{episode_key}", {**episode, "open": False})
            else:
                log.info("drift check of %s: %s", version, report["reason"])
        elif episode.get("open"):
            log.info(
                "drift of %s goes on (episode %s, run started): %s", version, episode["window_id"], report["reason"]
            )
        else:
            self._open(version, report)
        return report

    def _open(self, version: str, report: dict[str, Any]) -> None:
        window_id = report["window_id"]
        record = {
            "version": version,
            "window_id": window_id,
            "run": run_name(window_id),
            "reason": report["reason"],
            "report": report["report_uri"],
            "window": report["window"],
        }
        if self.log.write(f"{version}/{window_id}.json", record):
            self._submit(record)
            log.warning("%s; retraining: %s", report["reason"], record["run"])
        self.registry.store.replace_json(f"{DRIFT_LOG}/{version}/{OPEN}", {"open": True, "window_id": window_id})

    def _submit(self, record: dict[str, Any]) -> None:
        reason = f"{record['reason'][:200]} (served version {record['version']})"
        details = {"report": record["report"], "window_id": record["window_id"], "version": record["version"]}
        self.runs.submit(record["run"], {"reason": reason}, "drift", None, details)
