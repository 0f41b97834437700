"""The WorkflowTemplate `fashion-mnist-train-deploy`, read top to bottom like the DAG it draws:

fetch-dataset ─► train ─► evaluate ─► gate ─┬─(when decision == promote)─► rollout
                                            └─(otherwise: rollout is Skipped)
onExit: report
"""

from __future__ import annotations

from typing import Any

from hera.workflows import DAG, Parameter, Task, WorkflowTemplate
from hera.workflows import models as m

from steps.targets import DEFAULT_NAMESPACE
from workflows import arguments, templates
from workflows.arguments import Argument, step_arguments
from workflows.spec import REPORT, STEPS
from workflows.templates import Sizing

NAME = "fashion-mnist-train-deploy"
NAMESPACE = DEFAULT_NAMESPACE
SERVICE_ACCOUNT = "fashion-pipeline-workflow"


def _wf(name: str) -> str:
    return f"{{{{workflow.parameters.{name}}}}}"


def _from_workflow(step: str) -> dict[str, str]:
    """What a step's inputs get from the workflow's arguments."""
    return {argument.input_name: _wf(argument.name) for argument in step_arguments(step)}


def _parameter(argument: Argument) -> Parameter:
    return Parameter(
        name=argument.name,
        value=argument.argo_default,
        description=argument.spec.description,
        enum=list(argument.argo_choices) or None,
    )


# What each node reserves and may use, next to the DAG that runs them side by side or not
# (tests/unit/test_cluster_sizing.py holds the peak against the smallest documented cluster).
SIZING = {
    "fetch-dataset": Sizing("500m", "1Gi", 900),
    "train": Sizing("1", "3Gi", 3600, cpu_limit="2", memory_limit="4Gi"),
    "evaluate": Sizing("1", "2Gi", 1800, cpu_limit="2", memory_limit="3Gi"),
    "gate": Sizing("250m", "512Mi", 300),
    "rollout": Sizing("500m", "2Gi", 1800),
    "report": Sizing("250m", "512Mi", 300),
}
# More of each node's template: how it retries, what it reports to Prometheus, what it holds.
EXTRA: dict[str, dict[str, Any]] = {
    "fetch-dataset": {"retry_strategy": templates.NETWORK_RETRY},
    "evaluate": {"metrics": [templates.CANDIDATE_ACCURACY]},
    "gate": {"metrics": [templates.GATE_DECISIONS]},
    "rollout": {
        "retry_strategy": templates.ROLLOUT_RETRY,
        "synchronization": m.Synchronization(mutexes=[m.Mutex(name=templates.ROLLOUT_MUTEX)]),
        # The only step that writes InferenceServices runs as the only account allowed to (argo/rbac.yaml).
        "service_account_name": templates.ROLLOUT_SERVICE_ACCOUNT,
    },
}


def build() -> WorkflowTemplate:
    with WorkflowTemplate(
        name=NAME,
        namespace=NAMESPACE,
        annotations={
            "workflows.argoproj.io/title": "Fashion-MNIST: train, gate, deploy",
            "workflows.argoproj.io/description": (
                "Fetch Fashion-MNIST, train a CNN, evaluate it against the model in production, "
                "and roll it out to KServe with a canary only if the gate promotes it."
            ),
        },
        labels={"app.kubernetes.io/name": "fashion-pipeline", "app.kubernetes.io/part-of": "fashion-pipeline"},
        entrypoint="train-deploy",
        on_exit="report",
        service_account_name=SERVICE_ACCOUNT,
        arguments=[_parameter(a) for a in arguments.ARGUMENTS],
        active_deadline_seconds=3 * 3600,
        pod_gc=m.PodGC(strategy="OnPodSuccess", delete_delay_duration="10m"),
        ttl_strategy=m.TTLStrategy(seconds_after_success=7 * 86400, seconds_after_failure=14 * 86400),
        security_context=templates.POD_SECURITY,
    ) as workflow:
        made = {step.name: templates.container(step, SIZING[step.name], **EXTRA.get(step.name, {})) for step in STEPS}
        templates.container(REPORT, SIZING[REPORT.name])

        # Hera types a template call for any context (Step | Task | None); in a DAG it is a Task.
        with DAG(name="train-deploy"):
            tasks: dict[str, Task] = {}
            for step in STEPS:
                passed = {name: tasks[up].get_parameter(output).value for name, (up, output) in step.upstream.items()}
                when = None
                if step.when:
                    up, output, value = step.when
                    when = f"{tasks[up].get_parameter(output).value} == {value}"
                task = made[step.name](arguments={**passed, **_from_workflow(step.command)}, when=when)
                assert isinstance(task, Task)
                if step.after:
                    tasks[step.after].next(task)
                tasks[step.name] = task
    return workflow


def manifest() -> dict[str, Any]:
    """The WorkflowTemplate as the dict `argo submit` would send."""
    return build().to_dict()
