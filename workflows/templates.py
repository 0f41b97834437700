"""The step templates: each runs one `fashion-pipeline` sub-command in the step image.

The command is the same in the container and in the local engine; outputs are files under
`OUTPUTS` (one per output parameter, plus reports), which the engine maps to a node directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hera.workflows import (
    Artifact,
    Container,
    Counter,
    Env,
    Gauge,
    Label,
    NoneArchiveStrategy,
    Parameter,
    Resources,
    RetryStrategy,
    SecretEnv,
)
from hera.workflows import models as m

from steps import STEP_IMAGE, hardware
from workflows import trigger
from workflows.arguments import step_arguments
from workflows.spec import STEP_OUTPUTS, Step

IMAGE = STEP_IMAGE
# The same code without TensorFlow, KServe and Hera (images/Dockerfile, target slim), for the steps that
# never import them: a cold node pulls a fraction of the full image before they start.
SLIM_IMAGE = f"{IMAGE}-slim"
OUTPUTS = "/tmp/outputs"
S3_SECRET = "fashion-pipeline-s3"
ROLLOUT_MUTEX = "fashion-mnist-rollout"
# The only step that writes InferenceServices runs as the only account allowed to (argo/rbac.yaml).
ROLLOUT_SERVICE_ACCOUNT = "fashion-pipeline-rollout"

_SECURITY = m.SecurityContext(
    allow_privilege_escalation=False,
    capabilities=m.Capabilities(drop=["ALL"]),
    run_as_non_root=True,
)
# Every pod, at the workflow level: the images' numeric user, and files it writes readable by its group.
POD_SECURITY = m.PodSecurityContext(
    run_as_non_root=True,
    run_as_user=10001,
    run_as_group=10001,
    fs_group=10001,
    seccomp_profile=m.SeccompProfile(type="RuntimeDefault"),
)
NETWORK_RETRY = RetryStrategy(
    limit=3,
    retry_policy="Always",
    backoff=m.Backoff(duration="10s", factor=m.IntOrString(2), max_duration="5m"),
)


def _env() -> list[Env | SecretEnv]:
    """Where the store is and how to reach it; the workflow name ties records to this run."""
    return [
        Env(name="FASHION_PIPELINE_STORE", value="{{workflow.parameters.store}}"),
        Env(name="FASHION_PIPELINE_WORKFLOW", value="{{workflow.name}}"),
        Env(name=trigger.ENV, value=f"{{{{workflow.parameters.{trigger.ARGUMENT}}}}}"),
        Env(name="S3_ENDPOINT", value="{{workflow.parameters.s3_endpoint}}"),
        SecretEnv(name="AWS_ACCESS_KEY_ID", secret_name=S3_SECRET, secret_key="AWS_ACCESS_KEY_ID"),
        SecretEnv(name="AWS_SECRET_ACCESS_KEY", secret_name=S3_SECRET, secret_key="AWS_SECRET_ACCESS_KEY"),
        Env(name="TF_CPP_MIN_LOG_LEVEL", value="2"),
    ]


def _outputs(step: str) -> list[Parameter | Artifact]:
    """The step's outputs (workflows/spec.py): parameters from files, reports the Argo UI can render."""
    declared: list[Parameter | Artifact] = []
    for output in STEP_OUTPUTS[step]:
        if output.file is None:
            value_from = m.ValueFrom(path=f"{OUTPUTS}/{output.name}", default=output.default)
            declared.append(Parameter(name=output.name, value_from=value_from, global_name=output.global_name))
        else:  # unarchived, with its extension, optional: a report is never worth failing a node for
            path = f"{OUTPUTS}/{output.file}"
            declared.append(Artifact(name=output.name, path=path, archive=NoneArchiveStrategy(), optional=True))
    return declared


@dataclass(frozen=True)
class Sizing:
    """What a node's pod reserves (requests) and may use (limits, default: the requests); its deadline."""

    cpu: str
    memory: str
    deadline_s: int
    cpu_limit: str | None = None
    memory_limit: str | None = None


def _command(step: Step) -> dict[str, Any]:
    """`fashion-pipeline COMMAND --name {{inputs.parameters.name}} ... EXTRA --out OUTPUTS`, and the inputs it reads.

    The inputs are what upstream steps pass, then the workflow arguments the step takes (workflows/arguments.py);
    `--out` for a step with outputs (workflows/spec.py).
    """
    names = (*step.upstream, *(argument.input_name for argument in step_arguments(step.command)))
    args = [step.command]
    for name in names:
        args += [f"--{name.replace('_', '-')}", f"{{{{inputs.parameters.{name}}}}}"]
    args += step.extra_args
    inputs = {"inputs": [Parameter(name=name) for name in names] or None}
    if step.command not in STEP_OUTPUTS:
        return {"args": args, **inputs}
    return {"args": [*args, "--out", OUTPUTS], **inputs, "outputs": _outputs(step.command)}


def _cpu_limit_env() -> m.EnvVar:
    """The container's own limits.cpu (downward API): TensorFlow would otherwise size its pools by host cores."""
    source = m.EnvVarSource(resource_field_ref=m.ResourceFieldSelector(resource="limits.cpu", divisor=m.Quantity("1")))
    return m.EnvVar(name=hardware.CPU_LIMIT_ENV, value_from=source)


def container(step: Step, sizing: Sizing, **extra: Any) -> Container:
    """The step's template: its command in its image, with the store's env, the pod's security and its sizing.

    `extra` are more Container fields, the DAG's to choose: retries, metrics, a mutex, a service account.
    """
    return Container(
        name=step.name,
        image=SLIM_IMAGE if step.slim else IMAGE,
        image_pull_policy="IfNotPresent",
        command=["fashion-pipeline"],
        env=[
            *_env(),
            *([_cpu_limit_env()] if step.cpu_limit_env else []),
            *(SecretEnv(name=n, secret_name=secret, secret_key=key) for n, (secret, key) in step.secret_env.items()),
        ],
        security_context=_SECURITY,
        resources=Resources(
            cpu_request=sizing.cpu,
            cpu_limit=sizing.cpu_limit or sizing.cpu,
            memory_request=sizing.memory,
            memory_limit=sizing.memory_limit or sizing.memory,
        ),
        active_deadline_seconds=sizing.deadline_s,
        **_command(step),
        **extra,
    )


CANDIDATE_ACCURACY = Gauge(
    name="fashion_pipeline_candidate_accuracy",
    help="Test accuracy of the candidate model trained by this workflow",
    value="{{outputs.parameters.accuracy}}",
    realtime=False,
)
GATE_DECISIONS = Counter(
    name="fashion_pipeline_gate_decisions_total",
    help="Gate decisions, by outcome",
    labels=[Label(key="decision", value="{{outputs.parameters.decision}}")],
    value="1",
)
ROLLOUT_RETRY = RetryStrategy(
    limit=2, retry_policy="OnError", backoff=m.Backoff(duration="30s", factor=m.IntOrString(2))
)
