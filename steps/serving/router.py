"""Which version answers a request: production, or the canary for its share; both follow the registry's aliases.

Production is the registry's `production` alias; a `canary` alias with a `percent` takes that share of
requests (like KServe's `canaryTrafficPercent`). A new version is loaded and warmed in the watcher's
thread, then swapped in with one reference assignment; a version that fails to load is never swapped
in, and the old one keeps serving.
"""

from __future__ import annotations

import logging
import threading

from steps.errors import UserError
from steps.registry import Registry
from steps.serving.loading import Loaded, load_version

log = logging.getLogger(__name__)


class Router:
    """Which version answers: production, or the canary for its share of requests."""

    def __init__(self) -> None:
        self.production: Loaded | None = None
        self.canary: Loaded | None = None
        self.percent = 0
        self._credit = 0
        self._lock = threading.Lock()

    def pick(self, route: str = "") -> tuple[Loaded, str]:
        """`route` 'canary' or 'production' pins the choice (for probing); otherwise traffic is split."""
        production, canary, percent = self.production, self.canary, self.percent
        if production is None:
            raise RuntimeError("no model loaded")
        if route == "canary" and canary is not None:
            return canary, "canary"
        if route == "production":
            return production, "production"
        if canary is None or percent <= 0:
            return production, "production"
        # Smooth weighted round-robin: exactly `percent` of every 100 requests go to the canary.
        with self._lock:
            self._credit += percent
            if self._credit >= 100:
                self._credit -= 100
                return canary, "canary"
        return production, "production"


class AliasWatcher:
    """Keeps the router in step with the registry's aliases."""

    def __init__(self, registry: Registry, router: Router) -> None:
        self.registry = registry
        self.router = router
        self.cache: dict[str, Loaded] = {}
        self.failed: set[str] = set()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, poll_s: float) -> None:
        """Follow the aliases every `poll_s` in a thread of its own, until `stop`."""
        self._stopping.clear()
        self._thread = threading.Thread(target=self._follow, args=(poll_s,), name="alias-watcher", daemon=True)
        self._thread.start()

    def _follow(self, poll_s: float) -> None:
        while not self._stopping.wait(poll_s):
            try:
                self.sync()
            except Exception as exc:  # the watcher must survive a flaky store
                log.warning("alias check failed: %s", exc)

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout_s: float = 30) -> None:
        """Stop following; a version being loaded finishes loading first."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _get(self, version: str) -> Loaded | None:
        if version in self.cache:
            return self.cache[version]
        if version in self.failed:
            return None
        try:
            loaded = load_version(self.registry, version)
        except Exception as exc:  # any failure to load must leave the old version serving
            self.failed.add(version)
            log.error(
                "version %s failed to load; still serving %s: %s",
                version,
                self.router.production.version if self.router.production else "nothing",
                exc,
            )
            return None
        self.cache = {v: lv for v, lv in self.cache.items() if v in self._wanted()} | {version: loaded}
        return loaded

    def _wanted(self) -> set[str]:
        return {lv.version for lv in (self.router.production, self.router.canary) if lv}

    def sync(self) -> None:
        """Load what the aliases name (in this thread), then swap references."""
        production = self.registry.alias("production")
        if production is None:
            if self.router.production is None:
                raise UserError(f"nothing to serve: the registry at {self.registry.store.uri} has no production model")
        elif self.router.production is None or production["version"] != self.router.production.version:
            loaded = self._get(production["version"])
            if loaded is not None:
                previous = self.router.production.version if self.router.production else None
                self.router.production = loaded
                log.info("production is now %s (was %s)", loaded.version, previous or "nothing")
        canary = self.registry.alias("canary")
        if canary is None:
            if self.router.canary is not None:
                log.info("canary %s removed", self.router.canary.version)
            self.router.canary, self.router.percent = None, 0
        else:
            percent = int(canary.get("percent", 0))
            current = self.router.canary
            if current is None or current.version != canary["version"]:
                loaded = self._get(canary["version"])
                if loaded is not None:
                    self.router.canary, self.router.percent = loaded, percent
                    log.info("canary %s takes %d%% of requests", loaded.version, percent)
            elif percent != self.router.percent:
                self.router.percent = percent
                log.info("canary %s now takes %d%% of requests", current.version, percent)
