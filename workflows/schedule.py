"""The CronWorkflow: retrain nightly from the WorkflowTemplate, never two at once."""

from __future__ import annotations

from typing import Any

from hera.workflows import CronWorkflow
from hera.workflows import models as m

from workflows import pipeline, trigger

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
