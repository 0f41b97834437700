"""Each step declared once: its command, what it takes from earlier steps, and what it outputs.

The template (workflows/templates.py `container`), the DAG task (workflows/pipeline.py) and the command
(workflows/cli/steps.py `step_command`) are all derived from a `Step` here; its workflow arguments come
from workflows/arguments.py.

A parameter is a file named after it in the step's `--out` directory (Argo's `valueFrom.path`); a
report is a file the Argo UI shows as an artifact. workflows/templates.py turns these into the
template's outputs; `write_outputs` (workflows/cli/app.py) refuses a value that is not declared here,
or a declared parameter left out, so a step and its template cannot drift apart: on Argo an undeclared
file is dropped unseen, and a missing one fails the node. This module imports no Hera (the slim image
has none).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Output:
    name: str
    file: str | None = None  # a report: this file, shown by the Argo UI; None: a parameter of that name
    default: str | None = None  # a parameter the node may not write (Argo uses this instead)
    global_name: str | None = None  # also a workflow output parameter, under this name

    @property
    def is_parameter(self) -> bool:
        return self.file is None


def _report(name: str, file: str) -> Output:
    return Output(name, file=file)


# Keyed by the step's command (`fashion-pipeline <step>`).
STEP_OUTPUTS: dict[str, tuple[Output, ...]] = {
    "fetch": (
        Output("dataset_uri"),
        Output("dataset_digest"),
        Output("cache_hit"),
        Output("canonical"),
        Output("source"),
        _report("lineage", "lineage.json"),
    ),
    "train": (
        Output("model_version", global_name="model_version"),
        Output("model_uri"),
        Output("training"),
        _report("training-curve", "training-curve.png"),
        _report("history", "history.json"),
    ),
    "evaluate": (
        Output("metrics_uri"),
        Output("accuracy", global_name="accuracy"),
        Output("champion_version"),
        Output("champion_accuracy"),
        Output("p_value"),
        _report("metrics", "metrics.json"),
        _report("confusion-matrix", "confusion-matrix.png"),
        _report("confusion-matrix-counts", "confusion-matrix.json"),
    ),
    "gate": (
        Output("decision", global_name="decision"),
        Output("model_version"),
        _report("decision", "decision.json"),
        _report("model-card", "model-card.md"),
    ),
    # Read by the exit report whether rollout ran or was Skipped: defaults are required.
    "rollout": (
        Output("outcome", default="skipped", global_name="rollout_outcome"),
        Output("served_version", default="", global_name="served_version"),
        _report("rollout", "rollout.json"),
    ),
    "report": (_report("summary", "summary.md"),),
    # The cluster's drift check (workflows/triggers/drift.py): what the Argo UI shows of each check.
    "drift-check": (_report("drift", "drift.json"), _report("drift-plot", "drift.png")),
}


def parameter_names(step: str) -> set[str]:
    return {output.name for output in STEP_OUTPUTS[step] if output.is_parameter}


def check_values(step: str, values: dict[str, object]) -> None:
    """A step's output parameters are exactly its declared ones (those with a default may be left out)."""
    declared = parameter_names(step)
    required = {o.name for o in STEP_OUTPUTS[step] if o.is_parameter and o.default is None}
    undeclared, missing = set(values) - declared, required - set(values)
    if undeclared or missing:
        raise ValueError(
            f"step {step!r} writes outputs its template does not declare ({sorted(undeclared)}) or leaves out "
            f"declared ones ({sorted(missing)}): declare them in workflows/outputs.py"
        )


@dataclass(frozen=True)
class Step:
    """One step: its template, its command line and its DAG task are all derived from this.

    The command's workflow arguments come from workflows/arguments.py, its outputs from `STEP_OUTPUTS`
    (declared once each); `upstream` names the inputs it takes from earlier steps' outputs, in the
    order the command receives them. Where its pod runs and with what (sizing, retries, metrics) is
    the DAG's business (workflows/pipeline.py).
    """

    name: str  # the template's, the task's and so the node's name
    command: str  # `fashion-pipeline COMMAND`
    upstream: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # input -> (step, output)
    extra_args: tuple[str, ...] = ()
    after: str | None = None  # the task it depends on
    when: tuple[str, str, str] | None = None  # (step, output, value): run only if that output has that value
    slim: bool = False  # imports no TensorFlow: runs in the slim image
    cpu_limit_env: bool = False  # given its limits.cpu (downward API) to size TensorFlow's thread pools
    secret_env: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # env name -> (Secret, key)

    @property
    def outputs(self) -> tuple[Output, ...]:
        return STEP_OUTPUTS.get(self.command, ())

    def flags(self) -> list[str]:
        """The options its template passes besides the workflow arguments: upstream inputs, then extra args."""
        extra = [arg[2:] for arg in self.extra_args if arg.startswith("--")]
        return [*(name.replace("_", "-") for name in self.upstream), *extra]


DATASET = ("fetch-dataset", "dataset_uri")
# The pipeline's steps in the order of the DAG (workflows/pipeline.py draws it); the exit report runs after
# everything (onExit).
STEPS = (
    Step("fetch-dataset", "fetch", slim=True),
    Step("train", "train", upstream={"dataset": DATASET}, after="fetch-dataset", cpu_limit_env=True),
    Step(
        "evaluate",
        "evaluate",
        upstream={"dataset": DATASET, "model": ("train", "model_version")},
        extra_args=("--champion", "production"),
        after="train",
    ),
    Step("gate", "gate", upstream={"metrics": ("evaluate", "metrics_uri")}, after="evaluate", slim=True),
    Step(
        "rollout",
        "rollout",
        upstream={"model": ("gate", "model_version"), "dataset": DATASET},
        extra_args=("--namespace", "{{workflow.namespace}}"),
        after="gate",
        when=("gate", "decision", "promote"),
    ),
)
REPORT = Step(
    "report",
    "report",
    extra_args=(
        "--workflow",
        "{{workflow.name}}",
        "--status",
        "{{workflow.status}}",
        "--failures",
        "{{workflow.failures}}",
    ),
    slim=True,
)
BY_COMMAND = {step.command: step for step in (*STEPS, REPORT)}
