"""The local target: the model server of `fashion-pipeline serve`, steered by the registry's aliases."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from steps.errors import UserError
from steps.parameters import setting
from steps.registry import MODEL_NAME, Registry
from steps.serving.probe import ProbeResult, probe_over_http
from steps.serving.protocol import CODECS, ROUTE_HEADER, VERSION_HEADER, Protocol, ready_path

log = logging.getLogger(__name__)
_ACTOR = "rollout:local"
# Written once here: where the embedded model server (`serve`, `up`) listens, and where clients look for it.
DEFAULT_SERVER_URL = "http://127.0.0.1:8080"


@dataclass(frozen=True)
class LocalOptions:
    """What the local target is built with (the rollout command's options, steps/parameters.py `setting`)."""

    server_url: str = setting(
        DEFAULT_SERVER_URL,
        "local target: the model server (if none answers, the registry is promoted).",
        envvar="FASHION_PIPELINE_SERVER_URL",
    )


def local_target(registry: Registry, options: LocalOptions, ready_timeout_s: float) -> LocalTarget | None:
    """The running model server at `options.server_url`; None if none answers (promote in the registry only)."""
    local = LocalTarget(registry, options.server_url)
    if local.server_running():
        return local
    log.info("no local model server answers at %s: promoting in the registry only", options.server_url)
    return None


class LocalTarget:
    """Production and canary are registry aliases; the server follows them (hot swap)."""

    name = "local"
    follows_registry = True  # production moves with the registry alias, which rollout sets

    def __init__(self, registry: Registry, server_url: str = DEFAULT_SERVER_URL, poll_s: float = 0.5) -> None:
        self.registry = registry
        self.server_url = server_url.rstrip("/")
        self.poll_s = poll_s
        self.predict_url = self.server_url + CODECS[Protocol.V1].predict_path(MODEL_NAME)

    def server_running(self) -> bool:
        import requests

        try:
            return requests.get(self.server_url + ready_path(MODEL_NAME), timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def _served_version(self, route: str) -> str | None:
        import requests

        try:
            response = requests.post(
                self.predict_url,
                json=CODECS[Protocol.V1].request(np.zeros((1, 28, 28))),
                headers={ROUTE_HEADER: route},
                timeout=5,
            )
        except requests.RequestException:
            return None
        return response.headers.get(VERSION_HEADER) if response.status_code == 200 else None

    def live_version(self) -> str | None:
        return self._served_version("production")

    def deploy_canary(self, version: str, storage_uri: str, percent: int) -> None:
        self.registry.set_alias("canary", version, f"canary at {percent}%", _ACTOR, extra={"percent": percent})

    def _wait_for(self, route: str, version: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        seen = None
        while time.monotonic() < deadline:
            seen = self._served_version(route)
            if seen == version:
                return
            time.sleep(self.poll_s)
        raise UserError(
            f"local server at {self.server_url}: {route} still serves {seen or 'nothing'} "
            f"after {timeout_s:g}s, expected {version}"
        )

    def wait_ready(self, version: str, timeout_s: float) -> None:
        self._wait_for("canary", version, timeout_s)

    def probe(self, version: str, images: np.ndarray, labels: np.ndarray, batch: int) -> ProbeResult:
        return probe_over_http(self.predict_url, images, labels, batch, headers={ROUTE_HEADER: "canary"})

    def promote(self, version: str) -> None:
        # The production alias has moved already (rollout sets it): drop the canary, wait for the swap.
        self.registry.set_alias("canary", None, f"{version} promoted", _ACTOR)
        self._wait_for("production", version, timeout_s=60)

    def rollback(self, version: str) -> None:
        self.registry.set_alias("canary", None, f"{version} rolled back", _ACTOR)
