"""The WorkflowTemplate `fashion-mnist-train-deploy`, read top to bottom like the DAG it draws:

fetch-dataset ─► train ─► evaluate ─► gate ─┬─(when decision == promote)─► rollout
                                            └─(otherwise: rollout is Skipped)
onExit: report
"""

from __future__ import annotations

from typing import Any

from hera.workflows import DAG, Parameter, Task, WorkflowTemplate
from hera.workflows import models as m

from workflows import arguments, templates
from workflows.arguments import Argument, step_arguments

NAME = "fashion-mnist-train-deploy"
NAMESPACE = "fashion"
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
        fetch_dataset = templates.fetch_dataset()
        train = templates.train()
        evaluate = templates.evaluate()
        gate = templates.gate()
        rollout = templates.rollout()
        templates.report()

        # Hera types a template call for any context (Step | Task | None); in a DAG it is a Task.
        with DAG(name="train-deploy"):
            fetched = fetch_dataset(arguments=_from_workflow("fetch"))
            assert isinstance(fetched, Task)
            trained = train(
                arguments={
                    "dataset": fetched.get_parameter("dataset_uri").value,
                    **_from_workflow("train"),
                }
            )
            assert isinstance(trained, Task)
            evaluated = evaluate(
                arguments={
                    "dataset": fetched.get_parameter("dataset_uri").value,
                    "model": trained.get_parameter("model_version").value,
                }
            )
            assert isinstance(evaluated, Task)
            gated = gate(
                arguments={
                    "metrics": evaluated.get_parameter("metrics_uri").value,
                    **_from_workflow("gate"),
                }
            )
            assert isinstance(gated, Task)
            rolled_out = rollout(
                arguments={
                    "model": gated.get_parameter("model_version").value,
                    "dataset": fetched.get_parameter("dataset_uri").value,
                    **_from_workflow("rollout"),
                },
                when=f"{gated.get_parameter('decision').value} == promote",
            )
            assert isinstance(rolled_out, Task)
            # `>>` would do; Hera annotates its chained result as a list `>>` does not accept.
            fetched.next(trained).next(evaluated).next(gated).next(rolled_out)
    return workflow


def manifest() -> dict[str, Any]:
    """The WorkflowTemplate as the dict `argo submit` would send."""
    return build().to_dict()
