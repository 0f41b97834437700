"""Where a model is served; the rollout drives any of them through the same steps (`Target`, base.py).

A new target is a module of this package with its class (the members of `Target`), a frozen dataclass
of what it is built with (fields declared with `steps.parameters.setting`, or `parameter` for a workflow
argument), and a function that builds it; plus one entry in `KINDS`. The rollout command's options, the
workflow argument's choices and `rollout` find it there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from steps.errors import UserError
from steps.parameters import build
from steps.targets.base import FIRST_READY_TIMEOUT_S, READY_TIMEOUT_S, Target
from steps.targets.kserve import (
    DEFAULT_NAMESPACE,
    DEFAULT_SERVING_RUNTIME,
    SERVING_RUNTIMES,
    KServeOptions,
    kserve_target,
)
from steps.targets.local import DEFAULT_SERVER_URL, LocalOptions, local_target

if TYPE_CHECKING:
    from steps.registry import Registry

__all__ = [
    "DEFAULT_NAMESPACE",
    "DEFAULT_SERVER_URL",
    "DEFAULT_SERVING_RUNTIME",
    "FIRST_READY_TIMEOUT_S",
    "KINDS",
    "READY_TIMEOUT_S",
    "SERVING_RUNTIMES",
    "TARGETS",
    "Target",
    "TargetKind",
    "make_target",
]


@dataclass(frozen=True)
class TargetKind:
    """A kind of target: the dataclass of its options, and how to build one from them (None: nothing to deploy to)."""

    options: type
    build: Callable[[Registry, Any, float], Target | None]


# name -> kind. A kind's build returns None when there is nothing to deploy to, and rollout then
# promotes the preflighted version in the registry only.
KINDS: dict[str, TargetKind] = {
    "local": TargetKind(LocalOptions, local_target),
    "kserve": TargetKind(KServeOptions, kserve_target),
}
TARGETS = tuple(KINDS)


def make_target(
    name: str, registry: Registry, options: Mapping[str, Any], ready_timeout_s: float = READY_TIMEOUT_S
) -> Target | None:
    """The target called `name`, built from those `options` that are its own (None: registry only).

    `options` may hold every kind's options (the rollout command's); each kind takes its own fields.
    """
    try:
        kind = KINDS[name]
    except KeyError:
        raise UserError(f"unknown rollout target {name!r}: choose one of {', '.join(TARGETS)}") from None
    return kind.build(registry, build(kind.options, options), ready_timeout_s)
