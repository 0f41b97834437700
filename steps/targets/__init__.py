"""Where a model is served; the rollout drives any of them through the same steps.

A new target is a class with the members of `Target` in a module of this package, and one entry
in `FACTORIES` that builds it from `TargetOptions`; the CLI, the workflow argument's choices and
`rollout` find it there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from steps.errors import UserError
from steps.serving.probe import ProbeResult

if TYPE_CHECKING:
    import numpy as np

    from steps.registry import Registry

log = logging.getLogger(__name__)
# kserve: TF Serving (amd64 images only), or the step image's own server (arm64 too).
SERVING_RUNTIMES = ("tensorflow", "custom")
DEFAULT_SERVING_RUNTIME = "tensorflow"
READY_TIMEOUT_S = 300.0  # how long a canary, or a restored production, may take to be ready
# A first deployment's revision pulls the serving image, KServe's storage initializer and Knative's
# queue-proxy on a cold node: it gets Knative's own progress deadline (600 s by default).
FIRST_READY_TIMEOUT_S = 600.0


class Target(Protocol):
    """A serving target: it can say what it serves, take a canary, and promote or roll it back.

    `steps.rollout` drives every target through one state machine (a failed check at any arrow
    after `deploy_canary` goes to rolled back; production is untouched until promoted):

        none ──deploy_canary──▶ canary ──wait_ready, probe: all checks pass──▶ promoted
                                   │
                                   └──not ready, or a probe check fails──▶ rolled back (rollback)

    On promote, which side moves first is the target's `follows_registry`:
      True  (local): the registry's production alias moves, then `promote` — the server follows the alias.
      False (kserve): `promote` moves the InferenceService, then the alias follows what it serves.
    Either way a crash in between leaves the side that moved first as the truth, and the next
    rollout's `live_version` reconciles the other.
    """

    name: str
    # Which side moves first on promote: True, the registry alias (the target serves what it names);
    # False, the target (it is the truth, and the alias follows it).
    follows_registry: bool

    def live_version(self) -> str | None:
        """The version serving production traffic now, or None if nothing is deployed."""

    def deploy_canary(self, version: str, storage_uri: str, percent: int) -> None:
        """Start serving `version` next to production with `percent` of the traffic."""

    def wait_ready(self, version: str, timeout_s: float) -> None:
        """Block until the canary answers; raise RolloutError on timeout."""

    def probe(self, version: str, images: np.ndarray, labels: np.ndarray, batch: int) -> ProbeResult:
        """Send the holdout to the canary itself and measure errors, accuracy and latency."""

    def promote(self, version: str) -> None:
        """Send all traffic to the canary and make it production."""

    def rollback(self, version: str) -> None:
        """Drop the canary: production keeps (or gets back) 100% of the traffic."""


# Written once here: the embedded model server (`serve`, `up`) and the cluster namespace of everything.
DEFAULT_SERVER_URL = "http://127.0.0.1:8080"
DEFAULT_NAMESPACE = "fashion"


@dataclass(frozen=True)
class TargetOptions:
    """Everything a target may be built with; each factory reads the fields of its own target."""

    server_url: str = DEFAULT_SERVER_URL  # local: the model server
    namespace: str = DEFAULT_NAMESPACE  # kserve: the InferenceService's namespace
    probe_url: str | None = None  # kserve: probe through this base URL with a Host header
    serving_runtime: str = DEFAULT_SERVING_RUNTIME  # kserve: one of SERVING_RUNTIMES
    serving_image: str | None = None  # kserve, custom runtime: the image to run
    ready_timeout_s: float = READY_TIMEOUT_S  # kserve: how long a restored production may take to be ready
    inference_log_url: str | None = None  # kserve: the logger's sink (None: the namespace's log sink; "": none)


def _local(registry: Registry, options: TargetOptions) -> Target | None:
    from steps.targets.local import LocalTarget

    local = LocalTarget(registry, options.server_url)
    if local.server_running():
        return local
    log.info("no local model server answers at %s: promoting in the registry only", options.server_url)
    return None


def _kserve(registry: Registry, options: TargetOptions) -> Target | None:
    from steps.targets.kserve import KServeTarget

    return KServeTarget(
        namespace=options.namespace,
        probe_url=options.probe_url,
        serving_runtime=options.serving_runtime,
        serving_image=options.serving_image,
        restore_timeout_s=options.ready_timeout_s,
        inference_log_url=options.inference_log_url,
    )


# name -> factory. A factory returns None when there is nothing to deploy to, and rollout then
# promotes the preflighted version in the registry only.
FACTORIES: dict[str, Callable[[Registry, TargetOptions], Target | None]] = {"local": _local, "kserve": _kserve}
TARGETS = tuple(FACTORIES)


def make_target(name: str, registry: Registry, options: TargetOptions) -> Target | None:
    """The target called `name`, built from `options` (None: no server to deploy to, registry only)."""
    try:
        factory = FACTORIES[name]
    except KeyError:
        raise UserError(f"unknown rollout target {name!r}: choose one of {', '.join(TARGETS)}") from None
    return factory(registry, options)
