"""A step's parameters, each declared once: a dataclass field whose default carries what it means and its bounds.

    min_accuracy: float = parameter(0.90, "Gate: absolute test-accuracy floor", minimum=0, maximum=1)

workflows/arguments.py makes each such field a workflow argument, an input of the step's template,
an option of the step's command and, where events may set it, a field of the retrain payload;
`check` holds a value to the same bounds wherever the dataclass is built.

A `setting` is a field that is only an option of the step's command (where a target is, how long to
wait for it): workflows/cli/steps.py makes it one, with its help and environment variable.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from steps.errors import UserError

T = TypeVar("T", bool, int, float, str)
S = TypeVar("S", bool, int, float, str, None)
D = TypeVar("D")
_SPEC = "spec"
_SETTING = "setting"
TEMPLATE_DEFAULT = "template default"
OPERATOR_OVERRIDE = "operator override"


@dataclass(frozen=True)
class Spec:
    """What a parameter means and which values it takes."""

    description: str
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False  # `minimum` itself is out
    choices: tuple[str, ...] = ()

    def bounds(self) -> str:
        """The range in words: `between 0 and 1`, `in (0, 1]`, `at least 1`."""
        low, high = _number(self.minimum), _number(self.maximum)
        if self.exclusive_minimum:
            return f"in ({low}, {high}]" if high else f"greater than {low}"
        if low and high:
            return f"between {low} and {high}"
        return f"at least {low}" if low else f"at most {high}"

    def problem(self, name: str, value: Any) -> str | None:
        """Why `name` cannot be `value` (None: it can)."""
        if self.choices and value not in self.choices:
            return f"unknown {name} {value!r}: choose one of {', '.join(self.choices)}"
        low, high = self.minimum, self.maximum
        below = low is not None and (value <= low if self.exclusive_minimum else value < low)
        if below or (high is not None and value > high):
            return f"{name} must be {self.bounds()} (got {value})"
        return None


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def parameter(
    default: T,
    description: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    choices: Iterable[str] = (),
) -> T:
    """A dataclass field's default that declares the field a parameter of its step (see the module's docstring)."""
    spec = Spec(description, minimum, maximum, exclusive_minimum, tuple(choices))
    return field(default=default, metadata={_SPEC: spec})


@dataclass(frozen=True)
class Setting:
    """An option of a step's command that is not a workflow argument: how to reach where it works, not what it does."""

    help: str
    envvar: str | None = None  # also read from this environment variable


def setting(default: S, help: str, *, envvar: str | None = None) -> S:
    """A dataclass field's default that declares the field an option of its step's command (never an argument)."""
    return field(default=default, metadata={_SETTING: Setting(help, envvar)})


def settings(params: type) -> dict[str, tuple[Any, Setting]]:
    """The settings a dataclass declares: name -> (default, setting), in field order."""
    return {f.name: (f.default, f.metadata[_SETTING]) for f in fields(params) if _SETTING in f.metadata}


def build(params: type[D], values: Mapping[str, Any]) -> D:
    """The dataclass `params` from those of `values` that are its fields (the others belong to other classes)."""
    names = {f.name for f in fields(params)}  # type: ignore[arg-type]
    return params(**{name: value for name, value in values.items() if name in names})


def specs(params: type) -> dict[str, tuple[Any, Spec]]:
    """The parameters a dataclass declares: name -> (default, spec), in field order."""
    return {f.name: (f.default, f.metadata[_SPEC]) for f in fields(params) if _SPEC in f.metadata}


def check(params: Any) -> None:
    """Raise a UserError naming the first parameter of the dataclass `params` that is out of its bounds."""
    for name, (_, spec) in specs(type(params)).items():
        problem = spec.problem(name, getattr(params, name))
        if problem:
            raise UserError(problem)


def policy_sources(params: Any, started: Mapping[str, Any]) -> dict[str, str]:
    """Where each parameter of the dataclass `params` came from: the template's default, or an operator.

    `started` is the run's trigger (workflows/trigger.py): its `operator` holds the `-p` values the
    launcher (`via`) recorded. A value that differs from the default without such a record was set
    where this run cannot see (argo submit -p, an edited template).
    """
    recorded = started.get("operator")
    operator = {str(k): str(v) for k, v in recorded.items()} if isinstance(recorded, dict) else {}
    launcher = started.get("via")
    sources = {}
    for name, (default, _) in specs(type(params)).items():
        if name in operator:
            sources[name] = f"{OPERATOR_OVERRIDE} ({launcher} -p {name}={operator[name]})"
        elif getattr(params, name) == default:
            sources[name] = TEMPLATE_DEFAULT
        else:
            sources[name] = f"{OPERATOR_OVERRIDE} (differs from the template default; the launcher did not record it)"
    return sources
