"""What every serving target is: the contract `steps.rollout` drives, and how long it waits on one."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np

    from steps.serving.probe import ProbeResult

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
