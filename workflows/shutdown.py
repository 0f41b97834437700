"""Clean stop for the long-running commands: SIGTERM or SIGINT asks once, a second signal forces.

systemd, `docker stop` and Kubernetes send SIGTERM; a terminal sends SIGINT. Both are handled
whatever disposition was inherited: a process started with SIGINT ignored (a background job of a
non-interactive shell, `nohup`, a CI runner) still stops on either. SIGHUP is left alone, so
`nohup` keeps its meaning.

The handler only writes the signal's number to a pipe; a thread of its own reads it and does the
rest. A handler runs in the main thread between two bytecodes, possibly inside `Popen.wait` on the
child it would stop or inside the very `Event.wait` it would set, so it must not take a lock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
FORCED_EXIT_S = 15.0  # after a second signal, the longest the process still takes to exit
EXIT_UNCLEAN = 1  # stopped, but something had to be killed or did not stop in time
EXIT_FORCED = 128 + signal.SIGKILL  # a second signal: stopped as if killed


class Shutdown:
    """One stop request per process; `on_stop`/`on_force` callbacks run in a thread of their own."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.requested = threading.Event()
        self.forced = threading.Event()
        self.reason = ""
        self.signum: int | None = None
        self._stop: list[Callable[[], None]] = []
        self._force: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)

    def install(self) -> Shutdown:
        """Handle SIGTERM and SIGINT from now on (call from the main thread)."""
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._handle)
        threading.Thread(target=self._on_request, name="shutdown", daemon=True).start()
        return self

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Run `callback` once a stop is requested (at once if it already was)."""
        with self._lock:
            self._stop.append(callback)
            already = self.requested.is_set()
        if already:
            _spawn(callback)

    def on_force(self, callback: Callable[[], None]) -> None:
        with self._lock:
            self._force.append(callback)
            already = self.forced.is_set()
        if already:
            _spawn(callback)

    def request(self, reason: str) -> None:
        """Ask for a stop as a signal would (from any thread but a signal handler); a second request forces."""
        with self._lock:
            if not self.reason:
                self.reason = reason
        self._wake(0)

    def _handle(self, signum: int, frame: object) -> None:
        self._wake(signum)

    def _wake(self, signum: int) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, bytes([signum]))

    def exit_status(self) -> int:
        """For a command a signal interrupted: 128 + the signal, as a shell reports it; forced: as if killed."""
        if self.forced.is_set():
            return EXIT_FORCED
        return 128 + (self.signum or signal.SIGTERM)

    def _on_request(self) -> None:
        signum = os.read(self._wake_r, 1)[0]
        with self._lock:
            if signum:
                self.signum = signum
                self.reason = f"{self.what} received {signal.Signals(signum).name}"
            self.requested.set()
            callbacks = list(self._stop)
        log.info("stopping: %s (a second signal forces)", self.reason)
        for callback in callbacks:
            _spawn(callback)
        os.read(self._wake_r, 1)
        with self._lock:
            self.forced.set()
            callbacks = list(self._force)
        log.warning("forced stop: killing what is left")
        for callback in callbacks:
            _spawn(callback)
        # Whatever still hangs, the process ends within a bounded time after the second signal.
        timer = threading.Timer(FORCED_EXIT_S, _exit_now)
        timer.daemon = True
        timer.start()


def _spawn(callback: Callable[[], None]) -> None:
    threading.Thread(target=_guarded, args=(callback,), name="shutdown-step", daemon=True).start()


def _guarded(callback: Callable[[], None]) -> None:
    try:
        callback()
    except Exception:  # one failing step must not keep the others from stopping things
        log.exception("while stopping")


def _exit_now() -> None:
    kill_descendants()
    os._exit(EXIT_FORCED)


def kill_descendants() -> None:
    """SIGKILL every process this one started, in any process group or session."""
    import psutil  # a dependency of kserve

    with contextlib.suppress(psutil.Error):
        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child.kill()
