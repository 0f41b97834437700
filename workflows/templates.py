"""The step templates: each runs one `fashion-pipeline` sub-command in the step image.

The command is the same in the container and in the local engine; outputs are files under
`OUTPUTS` (one per output parameter, plus reports), which the engine maps to a node directory.
"""

from __future__ import annotations

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

from steps import __version__, hardware
from workflows import trigger
from workflows.arguments import step_arguments
from workflows.outputs import STEP_OUTPUTS

# Fully qualified: podman, docker and the kubelet (containerd) resolve it to the same image.
IMAGE = f"docker.io/fashion-pipeline/steps:{__version__}"
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
_NETWORK_RETRY = RetryStrategy(
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
    """The step's outputs (workflows/outputs.py): parameters from files, reports the Argo UI can render."""
    declared: list[Parameter | Artifact] = []
    for output in STEP_OUTPUTS[step]:
        if output.file is None:
            value_from = m.ValueFrom(path=f"{OUTPUTS}/{output.name}", default=output.default)
            declared.append(Parameter(name=output.name, value_from=value_from, global_name=output.global_name))
        else:  # unarchived, with its extension, optional: a report is never worth failing a node for
            path = f"{OUTPUTS}/{output.file}"
            declared.append(Artifact(name=output.name, path=path, archive=NoneArchiveStrategy(), optional=True))
    return declared


def _command(step: str, *upstream: str, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """`fashion-pipeline STEP --name {{inputs.parameters.name}} ... EXTRA --out OUTPUTS`, and the inputs it reads.

    The inputs are what upstream steps pass, then the workflow arguments the step takes (workflows/arguments.py).
    """
    names = (*upstream, *(argument.input_name for argument in step_arguments(step)))
    args = [step]
    for name in names:
        args += [f"--{name.replace('_', '-')}", f"{{{{inputs.parameters.{name}}}}}"]
    return {"args": [*args, *extra, "--out", OUTPUTS], "inputs": [Parameter(name=name) for name in names]}


def _cpu_limit_env() -> m.EnvVar:
    """The container's own limits.cpu (downward API): TensorFlow would otherwise size its pools by host cores."""
    source = m.EnvVarSource(resource_field_ref=m.ResourceFieldSelector(resource="limits.cpu", divisor=m.Quantity("1")))
    return m.EnvVar(name=hardware.CPU_LIMIT_ENV, value_from=source)


def _step(
    name: str,
    *,
    cpu: str,
    memory: str,
    deadline: int,
    slim: bool = False,
    cpu_limit: str | None = None,
    memory_limit: str | None = None,
    env: list[Env | SecretEnv | m.EnvVar] | None = None,
    **kwargs: Any,  # the rest of Container's fields (args, inputs, outputs, ...)
) -> Container:
    """A step container; requests are what the scheduler reserves, limits (default: the requests) may be higher.

    `slim`: the step imports no TensorFlow, so it runs in SLIM_IMAGE.
    """
    return Container(
        name=name,
        image=SLIM_IMAGE if slim else IMAGE,
        image_pull_policy="IfNotPresent",
        command=["fashion-pipeline"],
        env=[*_env(), *(env or [])],
        security_context=_SECURITY,
        resources=Resources(
            cpu_request=cpu,
            cpu_limit=cpu_limit or cpu,
            memory_request=memory,
            memory_limit=memory_limit or memory,
        ),
        active_deadline_seconds=deadline,
        **kwargs,
    )


def fetch_dataset() -> Container:
    return _step(
        "fetch-dataset",
        slim=True,
        cpu="500m",
        memory="1Gi",
        deadline=900,
        **_command("fetch"),
        outputs=_outputs("fetch"),
        retry_strategy=_NETWORK_RETRY,
    )


def train() -> Container:
    return _step(
        "train",
        cpu="1",
        cpu_limit="2",
        memory="3Gi",
        memory_limit="4Gi",
        env=[_cpu_limit_env()],
        deadline=3600,
        **_command("train", "dataset"),
        outputs=_outputs("train"),
    )


def evaluate() -> Container:
    return _step(
        "evaluate",
        cpu="1",
        cpu_limit="2",
        memory="2Gi",
        memory_limit="3Gi",
        deadline=1800,
        **_command("evaluate", "dataset", "model", extra=("--champion", "production")),
        outputs=_outputs("evaluate"),
        metrics=[
            Gauge(
                name="fashion_pipeline_candidate_accuracy",
                help="Test accuracy of the candidate model trained by this workflow",
                value="{{outputs.parameters.accuracy}}",
                realtime=False,
            )
        ],
    )


def gate() -> Container:
    return _step(
        "gate",
        slim=True,
        cpu="250m",
        memory="512Mi",
        deadline=300,
        **_command("gate", "metrics"),
        outputs=_outputs("gate"),
        metrics=[
            Counter(
                name="fashion_pipeline_gate_decisions_total",
                help="Gate decisions, by outcome",
                labels=[Label(key="decision", value="{{outputs.parameters.decision}}")],
                value="1",
            )
        ],
    )


def rollout() -> Container:
    return _step(
        "rollout",
        cpu="500m",
        memory="2Gi",
        deadline=1800,
        **_command("rollout", "model", "dataset", extra=("--namespace", "{{workflow.namespace}}")),
        outputs=_outputs("rollout"),
        retry_strategy=RetryStrategy(
            limit=2, retry_policy="OnError", backoff=m.Backoff(duration="30s", factor=m.IntOrString(2))
        ),
        synchronization=m.Synchronization(mutexes=[m.Mutex(name=ROLLOUT_MUTEX)]),
        service_account_name=ROLLOUT_SERVICE_ACCOUNT,
    )


def report() -> Container:
    return _step(
        "report",
        slim=True,
        cpu="250m",
        memory="512Mi",
        deadline=300,
        args=[
            "report",
            "--workflow",
            "{{workflow.name}}",
            "--status",
            "{{workflow.status}}",
            "--failures",
            "{{workflow.failures}}",
            "--out",
            OUTPUTS,
        ],
        outputs=_outputs("report"),
    )


def reconcile_drops() -> Container:
    """The drop reconciler's one step (workflows/drop_reconcile.py): it reads the store and creates Workflows.

    In the full image: its Kubernetes client alone (126 MB installed) would take the slim image past its
    budget (15% of the full one), and the nodes that train hold the full image anyway.
    """
    return _step(
        "reconcile-drops",
        cpu="250m",
        memory="512Mi",
        deadline=600,
        args=["reconcile-drops", "--namespace", "{{workflow.namespace}}"],
        retry_strategy=_NETWORK_RETRY,
    )
