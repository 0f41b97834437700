"""`fashion-pipeline up`: the embedded platform in one foreground process.

The model server (its own process, started once a production model exists), the retrain
webhook, the data-drop watcher on the store's incoming/ (workflows/triggers/drops.py), and the
CronWorkflow's schedule applied locally (same expression and timezone, concurrencyPolicy
Forbid), with one combined log. SIGTERM or Ctrl-C stops everything it started
(a run in progress is stopped and recorded as Failed with the reason; events not yet started stay
in the event log for the next start); a second signal kills what is left.
"""

from __future__ import annotations

import logging
import os

from steps.registry import Registry
from steps.serving.process import ModelServerProcess
from workflows.engine import RunQueue
from workflows.shutdown import Shutdown, kill_descendants
from workflows.triggers.base import LocalTrigger

log = logging.getLogger(__name__)
RUN_STOP_S = 120.0  # the node's grace period and the exit handler fit in well under this


def up(
    registry: Registry,
    host: str,
    server_port: int,
    triggers: list[LocalTrigger],
    runs: RunQueue,
    shutdown: Shutdown,
    log_sample_rate: float = 0.0,
) -> bool:
    """Run until a stop is requested; everything started here is stopped here. True if cleanly.

    The triggers (workflows/triggers/) queue their runs on `runs`: each first requeues what it
    accepted before a restart and never started, then starts listening; all are stopped, in reverse,
    before the run in progress is.
    """
    stop = shutdown.requested
    server = ModelServerProcess(registry.store.uri, host, server_port, log_sample_rate)

    def force() -> None:
        runs.terminate(shutdown.reason)
        kill_descendants()

    shutdown.on_force(force)
    os.environ["FASHION_PIPELINE_SERVER_URL"] = f"http://{host}:{server_port}"  # rollouts go to our server
    for trigger in triggers:
        requeued = trigger.requeue_unstarted()
        if requeued:
            log.info("%d event(s) accepted before a restart queued again: %s", requeued, trigger.describe())
        trigger.start()
        log.info("%s", trigger.describe())
    try:
        while not stop.is_set():
            if not server.running() and registry.alias("production") is not None:
                if server.proc is not None:
                    log.warning("the model server exited with %s: starting it again", server.proc.returncode)
                log.info("model server: http://%s:%d (production follows the registry)", host, server_port)
                server.start()
            elif server.proc is None:
                log.info("no production model yet: the model server starts after the first promotion")
            stop.wait(5)
    finally:
        log.info("shutting down%s", f" ({shutdown.reason})" if shutdown.reason else "")
        for trigger in reversed(triggers):
            trigger.stop()
        runs_stopped = runs.close(shutdown.reason or "the local platform is shutting down", RUN_STOP_S)
        server_stopped = server.stop()
        clean = runs_stopped and server_stopped and not shutdown.forced.is_set()
        log.info("stopped" if clean else "stopped, not cleanly")
    return clean
