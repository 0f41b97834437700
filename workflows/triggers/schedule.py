"""The schedule: retrain nightly from the WorkflowTemplate, never two at once.

On a cluster the CronWorkflow; in `up` the `Scheduler`, the same expression and timezone with
concurrencyPolicy Forbid (a tick while a run is busy is skipped).
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from hera.workflows import CronWorkflow
from hera.workflows import models as m

from workflows import pipeline, trigger

if TYPE_CHECKING:
    from workflows.engine import RunQueue

log = logging.getLogger(__name__)

NAME = "fashion-mnist-nightly"
SCHEDULES = ["0 2 * * *"]
TIMEZONE = "Etc/UTC"
REASON = "nightly retrain"
# A nightly run has the night: it trains for quality (>= 94.5% on the bfloat16 tier, README "Measured"),
# where an on-demand run keeps the default budget and stays fast.
NIGHTLY_BUDGET_S = 600
# What the schedule passes the WorkflowTemplate, here and in `up`'s schedule (workflows/platform.py).
ARGUMENTS = {"reason": REASON, "train_budget_s": str(NIGHTLY_BUDGET_S)}


def build() -> CronWorkflow:
    return CronWorkflow(
        name=NAME,
        namespace=pipeline.NAMESPACE,
        annotations={
            "workflows.argoproj.io/title": "Fashion-MNIST: nightly retrain",
            "workflows.argoproj.io/description": f"Runs {pipeline.NAME} at {', '.join(SCHEDULES)} ({TIMEZONE}).",
        },
        labels={"app.kubernetes.io/name": "fashion-pipeline", "app.kubernetes.io/part-of": "fashion-pipeline"},
        schedules=SCHEDULES,
        timezone=TIMEZONE,
        concurrency_policy="Forbid",
        starting_deadline_seconds=600,
        successful_jobs_history_limit=3,
        failed_jobs_history_limit=5,
        workflow_template_ref=m.WorkflowTemplateRef(name=pipeline.NAME),
        arguments=[
            *(m.Parameter(name=name, value=value) for name, value in ARGUMENTS.items()),
            m.Parameter(name=trigger.ARGUMENT, value=trigger.summary("schedule", f"cronworkflow/{NAME}")),
        ],
    )


def manifest() -> dict[str, Any]:
    return build().to_dict()


class Scheduler:
    """The CronWorkflow's schedules, evaluated in its timezone; a tick while a run is busy is skipped."""

    def __init__(self, runs: RunQueue, schedules: list[str] = SCHEDULES, timezone: str = TIMEZONE) -> None:
        self.runs = runs
        self.schedules = list(schedules)
        self.zone = ZoneInfo(timezone)
        self.stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="schedule", daemon=True)

    def next_fire(self, after: datetime) -> datetime:
        from croniter import croniter

        return min(croniter(expr, after).get_next(datetime) for expr in self.schedules)

    def describe(self) -> str:
        return f"schedule: {', '.join(self.schedules)} ({self.zone.key}), as the CronWorkflow {NAME}"

    def requeue_unstarted(self) -> int:
        return 0  # a missed tick is not made up for (startingDeadlineSeconds, as on the cluster)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.stopped.set()

    def _loop(self) -> None:
        while not self.stopped.is_set():
            now = datetime.now(self.zone)
            fire = self.next_fire(now)
            log.info("next scheduled retrain at %s (%s)", fire.isoformat(timespec="minutes"), self.zone.key)
            if self.stopped.wait((fire - now).total_seconds()):
                return
            self.fire(fire)

    def fire(self, at: datetime) -> None:
        """The tick due `at`: one run, as the CronWorkflow would start it, unless one is in progress."""
        if self.runs.busy():
            log.info("scheduled retrain skipped: a run is in progress (concurrencyPolicy Forbid)")
            return
        self.runs.submit(f"{NAME}-{at:%Y%m%d%H%M}", dict(ARGUMENTS), "schedule")
