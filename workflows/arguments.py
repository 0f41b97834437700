"""The workflow's arguments, declared once: `ARGUMENTS` makes the WorkflowTemplate's arguments, each
step template's inputs (and what the DAG passes them), the step commands' options and the retrain
payload's schema (workflows/triggers/payload.py).

A step's own parameters are declared where the step reads them, as `parameter` fields of its
dataclass (steps/parameters.py: type, default, description, bounds); the table takes them from there
and adds what only the workflow knows: the order, which step takes each argument, and whether an
event may set it. The arguments no dataclass holds are declared here in full.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from steps.errors import UserError
from steps.gate import GatePolicy
from steps.parameters import Spec, specs
from steps.rollout import RolloutPolicy
from steps.targets import TARGETS
from steps.targets.kserve import KServeOptions
from steps.train import TrainParams
from workflows import trigger

Value = bool | int | float | str
DEFAULT_STORE = "s3://fashion-pipeline"
DEFAULT_S3_ENDPOINT = "http://minio.fashion.svc.cluster.local:9000"
# How Argo spells a boolean: the only two values a boolean argument takes.
BOOLEAN = ("false", "true")


@dataclass(frozen=True)
class Argument:
    name: str
    default: Value  # its type is the argument's
    spec: Spec
    # The step whose template takes it as an input (fetch, train, gate, rollout); None: the workflow's
    # own, which every step reads from its environment.
    step: str | None = None
    input: str = ""  # the step's name for it (template input, command option) when not `name`
    event: bool = False  # an event (a webhook payload, a data drop) may set it; otherwise only the operator
    # Limits on what an event may send, beyond the spec (the step itself reads any value the operator gives):
    max_length: int | None = None
    pattern: str | None = None  # it must mean the same to Go RE2 (the Sensor) and Python re (the receiver)
    event_note: str = ""  # what the payload's description adds for whoever sends an event

    @property
    def input_name(self) -> str:
        return self.input or self.name

    @property
    def argo_default(self) -> str:
        return argo_string(self.default)

    @property
    def argo_choices(self) -> tuple[str, ...]:
        return BOOLEAN if isinstance(self.default, bool) else self.spec.choices


def _parameters(step: str, params: type, *, event: bool = False) -> tuple[Argument, ...]:
    """The parameters a step's dataclass declares, as arguments of that step, in field order."""
    return tuple(Argument(name, default, spec, step, event=event) for name, (default, spec) in specs(params).items())


# In the order the Argo UI lists them, and the Sensors' Workflows the ones they set: keep it, and add a
# new argument after the others of its step.
ARGUMENTS: tuple[Argument, ...] = (
    *_parameters("train", TrainParams, event=True),
    Argument(
        "data_url",
        "",
        Spec("A custom data drop or mirror tried before the default mirrors"),
        step="fetch",
        event=True,
        max_length=2048,
        pattern="^(https?|s3|file)://[^\\t\\n\\r ]+$",
        event_note=(
            "The pattern is what the fetch step reads; an event's URL must also start with one of the operator's "
            "allowed prefixes (by default https:// and s3://, see workflows/triggers/payload.py)."
        ),
    ),
    *_parameters("gate", GatePolicy),
    *_parameters("rollout", RolloutPolicy),
    Argument(
        "rollout_target",
        "kserve",
        Spec("Rollout: where the model is served", choices=TARGETS),
        step="rollout",
        input="target",
    ),
    Argument(
        "reason",
        "scheduled retrain",
        Spec("Why this run happened (kept in the registry's alias history)"),
        step="rollout",
        event=True,
        max_length=200,
    ),
    Argument("store", DEFAULT_STORE, Spec("Where datasets and models live (s3://bucket/prefix or file:///path)")),
    Argument("s3_endpoint", DEFAULT_S3_ENDPOINT, Spec("The MinIO/S3 endpoint of the store")),
    Argument(
        trigger.ARGUMENT, trigger.MANUAL, Spec("How this run started (JSON, set by its launcher; kept for audit)")
    ),
    *_parameters("rollout", KServeOptions),
)


def check_values(values: dict[str, str]) -> None:
    """Hold `-p NAME=VALUE` strings to their arguments' types and bounds, before a run starts.

    Argo checks only `enum`; the steps check their bounds when they run. A launcher checks them first,
    so `-p train_budget_s=0` is one line before any work, not a failed train node after fetch.
    """
    declared = {argument.name: argument for argument in ARGUMENTS}
    for name, text in values.items():
        argument = declared.get(name)
        if argument is None or isinstance(argument.default, (bool, str)):
            continue  # unknown names are the engine's to refuse; choices are the template's enum
        kind = type(argument.default)
        try:
            value = kind(text)
        except ValueError:
            raise UserError(f"-p {name}={text}: {name} takes {'an integer' if kind is int else 'a number'}") from None
        problem = argument.spec.problem(name, value)
        if problem:
            raise UserError(f"-p {name}={text}: {problem}")


def step_arguments(step: str) -> tuple[Argument, ...]:
    """The arguments `step` takes, in table order."""
    return tuple(argument for argument in ARGUMENTS if argument.step == step)


def argo_string(value: Value) -> str:
    """A JSON scalar as the string Argo Events makes of it (gjson), so the Sensor and the receiver agree.

    Booleans are `true`/`false`; integers are verbatim; any other number is written in the
    shortest positional form that reads back the same (1.0 -> `1`, 1e-05 -> `0.00001`).
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = format(Decimal(repr(value)), "f")
        return text.rstrip("0").rstrip(".") if "." in text else text
    return value
