"""What each step outputs, declared once: the templates declare it to Argo, the steps write exactly it.

A parameter is a file named after it in the step's `--out` directory (Argo's `valueFrom.path`); a
report is a file the Argo UI shows as an artifact. workflows/templates.py turns these into the
template's outputs; `write_outputs` (workflows/cli/app.py) refuses a value that is not declared here,
or a declared parameter left out, so a step and its template cannot drift apart: on Argo an undeclared
file is dropped unseen, and a missing one fails the node. This module imports no Hera (the slim image
has none).
"""

from __future__ import annotations

from dataclasses import dataclass


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
