"""`fashion-pipeline up`: the embedded platform in one foreground process.

The model server (its own process, started once a production model exists), the retrain
webhook, the data-drop watcher on the store's incoming/ (workflows/drops.py), and the
CronWorkflow's schedule applied locally (same expression and timezone, concurrencyPolicy
Forbid), with one combined log. SIGTERM or Ctrl-C stops everything it started
(a run in progress is stopped and recorded as Failed with the reason; events not yet started stay
in the event log for the next start); a second signal kills what is left.
"""

from __future__ import annotations

import logging
import os
import threading
from datetime import datetime
from zoneinfo import ZoneInfo

from steps.registry import Registry
from steps.serving.process import ModelServerProcess
from workflows import schedule
from workflows.drops import DropWatcher
from workflows.engine import RunQueue
from workflows.shutdown import Shutdown, kill_descendants
from workflows.webhook import WebhookServer

log = logging.getLogger("up")
RUN_STOP_S = 120.0  # the node's grace period and the exit handler fit in well under this


class Scheduler:
    """The CronWorkflow's schedules, evaluated in its timezone; a tick while a run is busy is skipped."""

    def __init__(self, runs: RunQueue, schedules: list[str], timezone: str, stopped: threading.Event) -> None:
        self.runs = runs
        self.schedules = schedules
        self.zone = ZoneInfo(timezone)
        self.stopped = stopped
        self._thread = threading.Thread(target=self._loop, name="schedule", daemon=True)

    def next_fire(self, after: datetime) -> datetime:
        from croniter import croniter

        return min(croniter(expr, after).get_next(datetime) for expr in self.schedules)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self.stopped.is_set():
            now = datetime.now(self.zone)
            fire = self.next_fire(now)
            log.info("next scheduled retrain at %s (%s)", fire.isoformat(timespec="minutes"), self.zone.key)
            if self.stopped.wait((fire - now).total_seconds()):
                return
            self.fire(fire)

    def fire(self, at: datetime) -> None:
        """The tick due `at`: one run, as the CronWorkflow would start it, unless one is in progress."""
        if self.runs.busy():
            log.info("scheduled retrain skipped: a run is in progress (concurrencyPolicy Forbid)")
            return
        self.runs.submit(f"{schedule.NAME}-{at:%Y%m%d%H%M}", dict(schedule.ARGUMENTS), "schedule")


def up(
    registry: Registry,
    host: str,
    server_port: int,
    webhook: WebhookServer,
    runs: RunQueue,
    shutdown: Shutdown,
    drops: DropWatcher | None = None,
) -> bool:
    """Run until a stop is requested; everything started here is stopped here. True if cleanly."""
    stop = shutdown.requested
    server = ModelServerProcess(registry.store.uri, host, server_port)

    def force() -> None:
        runs.terminate(shutdown.reason)
        kill_descendants()

    shutdown.on_force(force)
    os.environ["FASHION_PIPELINE_SERVER_URL"] = f"http://{host}:{server_port}"  # rollouts go to our server
    scheduler = Scheduler(runs, list(schedule.SCHEDULES), schedule.TIMEZONE, stop)
    webhook.start()
    log.info("webhook: POST http://%s:%d/retrain", webhook.httpd.server_address[0], webhook.port)
    requeued = webhook.requeue_unstarted()
    if requeued:
        log.info("%d accepted event(s) from before a restart queued again", requeued)
    if drops is not None:
        requeued = drops.requeue_unstarted()
        if requeued:
            log.info("%d accepted data drop(s) from before a restart queued again", requeued)
        log.info("data drops: watching %s every %.0f s", drops.store.uri_of("incoming/"), drops.poll_s)
        drops.start()
    scheduler.start()
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
        webhook.shutdown()
        if drops is not None:
            drops.stop()
        runs_stopped = runs.close(shutdown.reason or "the local platform is shutting down", RUN_STOP_S)
        server_stopped = server.stop()
        clean = runs_stopped and server_stopped and not shutdown.forced.is_set()
        log.info("stopped" if clean else "stopped, not cleanly")
    return clean
