"""The WorkflowTemplate `fashion-mnist-train-deploy`, read top to bottom like the DAG it draws:

fetch-dataset ─► train ─► evaluate ─► gate ─┬─(when decision == promote)─► rollout
                                            └─(otherwise: rollout is Skipped)
onExit: report
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hera.workflows import DAG, Parameter, Task, WorkflowTemplate
from hera.workflows import models as m

from steps.model import ARCHITECTURES, DEFAULT_ARCHITECTURE
from steps.targets.kserve import DEFAULT_SERVING_RUNTIME, SERVING_RUNTIMES
from steps.train import PRECISIONS, TrainParams
from workflows import templates, trigger

NAME = "fashion-mnist-train-deploy"
NAMESPACE = "fashion"
SERVICE_ACCOUNT = "fashion-pipeline-workflow"
DEFAULT_STORE = "s3://fashion-pipeline"
DEFAULT_S3_ENDPOINT = "http://minio.fashion.svc.cluster.local:9000"


@dataclass(frozen=True)
class Argument:
    name: str
    default: str
    description: str
    enum: tuple[str, ...] | None = None


_TRAIN = TrainParams()
# The order is part of the contract, so new arguments go at the end: the retrain Sensor's Workflow
# lists the arguments it sets in this order and maps payload fields to them by position.
ARGUMENTS = (
    Argument("epochs", str(_TRAIN.epochs), "Passes over the training split"),
    Argument("batch_size", str(_TRAIN.batch_size), "Images per training step"),
    Argument("learning_rate", str(_TRAIN.learning_rate), "Peak learning rate (warm-up, then cosine decay)"),
    Argument("seed", str(_TRAIN.seed), "Random seed for the subset, shuffling and initialisation"),
    Argument("architecture", DEFAULT_ARCHITECTURE, "CNN architecture", tuple(ARCHITECTURES)),
    Argument("train_limit", "0", "Train on this many images (0 = the whole split); small values for quick runs"),
    Argument("precision", _TRAIN.precision, "Training precision (the exported model is float32)", PRECISIONS),
    Argument("data_url", "", "A custom data drop or mirror tried before the default mirrors (empty: none)"),
    Argument("min_accuracy", "0.90", "Gate: absolute test-accuracy floor"),
    Argument("min_class_recall", "0.60", "Gate: floor for every class's recall"),
    Argument("min_delta", "0.0", "Gate: required accuracy improvement over the champion"),
    Argument("alpha", "0.05", "Gate: significance level of the exact McNemar test"),
    Argument("allow_equal", "false", "Gate: accept a non-inferior candidate instead", ("false", "true")),
    Argument("tolerance", "0.005", "Gate: non-inferiority margin when allow_equal is true"),
    Argument("first_run", "promote", "Gate: what to do when nothing is in production", ("promote", "reject")),
    Argument("canary_percent", "10", "Rollout: share of traffic the canary gets while it is probed"),
    Argument("rollout_target", "kserve", "Rollout: where the model is served", ("kserve", "local")),
    Argument("reason", "scheduled retrain", "Why this run happened (kept in the registry's alias history)"),
    Argument("store", DEFAULT_STORE, "Where datasets and models live (s3://bucket/prefix or file:///path)"),
    Argument("s3_endpoint", DEFAULT_S3_ENDPOINT, "The MinIO/S3 endpoint of the store"),
    Argument(trigger.ARGUMENT, trigger.MANUAL, "How this run started (JSON, set by its launcher; kept for audit)"),
    Argument(
        "serving_runtime",
        DEFAULT_SERVING_RUNTIME,
        "Rollout on KServe: tensorflow (TF Serving, amd64 only) or custom (the step image's own server, arm64 too)",
        SERVING_RUNTIMES,
    ),
)


def _wf(name: str) -> str:
    return f"{{{{workflow.parameters.{name}}}}}"


def _parameter(argument: Argument) -> Parameter:
    enum = list(argument.enum) if argument.enum else None
    return Parameter(name=argument.name, value=argument.default, description=argument.description, enum=enum)


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
        arguments=[_parameter(a) for a in ARGUMENTS],
        active_deadline_seconds=3 * 3600,
        pod_gc=m.PodGC(strategy="OnPodSuccess", delete_delay_duration="10m"),
        ttl_strategy=m.TTLStrategy(seconds_after_success=7 * 86400, seconds_after_failure=14 * 86400),
        security_context=m.PodSecurityContext(
            run_as_non_root=True,
            run_as_user=10001,
            run_as_group=10001,
            fs_group=10001,
            seccomp_profile=m.SeccompProfile(type="RuntimeDefault"),
        ),
    ) as workflow:
        fetch_dataset = templates.fetch_dataset()
        train = templates.train()
        evaluate = templates.evaluate()
        gate = templates.gate()
        rollout = templates.rollout()
        templates.report()

        # Hera types a template call for any context (Step | Task | None); in a DAG it is a Task.
        with DAG(name="train-deploy"):
            fetched = fetch_dataset(arguments={"data_url": _wf("data_url")})
            assert isinstance(fetched, Task)
            trained = train(
                arguments={
                    "dataset": fetched.get_parameter("dataset_uri").value,
                    **{name: _wf(name) for name in templates.TRAIN_INPUTS if name != "dataset"},
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
                    **{name: _wf(name) for name in templates.GATE_INPUTS if name != "metrics"},
                }
            )
            assert isinstance(gated, Task)
            rolled_out = rollout(
                arguments={
                    "model": gated.get_parameter("model_version").value,
                    "dataset": fetched.get_parameter("dataset_uri").value,
                    "target": _wf("rollout_target"),
                    "canary_percent": _wf("canary_percent"),
                    "reason": _wf("reason"),
                    "serving_runtime": _wf("serving_runtime"),
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
