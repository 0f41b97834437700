"""`serve --workers N`: N server processes sharing one port, started and stopped together.

KServe's own multi-worker mode pickles the model, which TensorFlow models refuse; here each process
loads its own copy and follows the registry by itself, and SO_REUSEPORT spreads connections over
them. Each worker leads its own process group: a terminal's Ctrl-C reaches only this supervisor,
which passes exactly one stop on to every worker (a worker that saw two signals would force).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Protocol

from steps.lifeline import die_with_parent
from steps.serving.process import terminate_group

log = logging.getLogger(__name__)
_POLL_S = 0.2


class StopRequests(Protocol):
    """The process's stop requests, as the CLI's signal handling keeps them: the first asks, the second forces."""

    requested: threading.Event
    forced: threading.Event

    def on_stop(self, callback: Callable[[], None]) -> None: ...

    def on_force(self, callback: Callable[[], None]) -> None: ...

    def request(self, reason: str) -> None: ...


def worker_argv(argv: list[str]) -> list[str]:
    """This command line without `--workers`, as one of several processes on the port."""
    kept, skip = [], False
    for arg in argv:
        if skip or arg.startswith("--workers="):
            skip = False
            continue
        skip = arg == "--workers"
        if not skip:
            kept.append(arg)
    return [*kept, "--reuse-port"]


def supervise(argv: list[str], workers: int, shutdown: StopRequests) -> bool:
    """Run the workers until a stop is requested or one exits; True if every one stopped cleanly."""
    children = [subprocess.Popen(argv, process_group=0, preexec_fn=die_with_parent()) for _ in range(workers)]

    def stop() -> None:
        for child in children:
            if child.poll() is None:
                terminate_group(child.pid, signal.SIGTERM)

    def force() -> None:
        for child in children:
            terminate_group(child.pid, signal.SIGKILL)

    shutdown.on_stop(stop)
    shutdown.on_force(force)
    unexpected = False
    while any(child.poll() is None for child in children):
        if not shutdown.requested.is_set():
            # A port half served is worse than none: one worker gone takes the others down.
            gone = next((child for child in children if child.poll() is not None), None)
            if gone is not None:
                log.error("worker %d exited with %s: stopping the others", gone.pid, gone.returncode)
                unexpected = True
                shutdown.request(f"worker {gone.pid} exited with {gone.returncode}")
        time.sleep(_POLL_S)
    codes = [child.returncode for child in children]
    return not unexpected and not shutdown.forced.is_set() and all(code == 0 for code in codes)
