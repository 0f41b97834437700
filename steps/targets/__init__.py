"""Where a model is served; the rollout drives any of them through the same steps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass
class ProbeResult:
    requests: int
    errors: int
    correct: int
    images: int
    latencies_ms: list[float] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=dict)  # X-Model-Version seen -> answers
    error_samples: list[str] = field(default_factory=list)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 1.0

    @property
    def accuracy(self) -> float:
        return self.correct / self.images if self.images else 0.0

    @property
    def p95_ms(self) -> float:
        return float(np.percentile(self.latencies_ms, 95)) if self.latencies_ms else float("inf")


class Target(Protocol):
    """A serving target: it can say what it serves, take a canary, and promote or roll it back."""

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
