"""The embedded platform's long-running services and inputs: `webhook`, `up`, `drop`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from steps.errors import UserError
from workflows.cli.app import (
    RunsDirOption,
    app,
    embedded_defaults,
    log,
    open_registry,
    open_store,
    parse_parameters,
)

PANEL = "Platform"

TokenFileOption = Annotated[
    Path | None, typer.Option(help="File holding the bearer token (default: $FASHION_PIPELINE_WEBHOOK_TOKEN).")
]
OperatorParameterOption = Annotated[
    list[str] | None,
    typer.Option(
        "--parameter",
        "-p",
        help="NAME=VALUE for every run started here, gate policy included (events cannot set the policy).",
    ),
]
RetryInterruptedOption = Annotated[
    bool,
    typer.Option(
        "--retry-interrupted",
        help="At start, retry the runs a crash cut short (Error: engine exited unexpectedly), like `runs retry`.",
    ),
]
AllowDataUrlOption = Annotated[
    list[str] | None,
    typer.Option(
        help="A data_url prefix events may name, e.g. https://data.example.com/ (repeatable; replaces the "
        "default https:// and s3://)."
    ),
]


def _webhook_token(token_file: Path | None) -> str:
    if token_file is not None:
        try:
            return token_file.read_text().strip()
        except OSError as exc:
            raise UserError(f"cannot read the token file {token_file}: {exc.strerror}") from exc
    token = os.environ.get("FASHION_PIPELINE_WEBHOOK_TOKEN", "").strip()
    if not token:
        raise UserError("the webhook needs a token: set FASHION_PIPELINE_WEBHOOK_TOKEN or pass --token-file")
    return token


def receiver(
    host: str,
    port: int,
    token_file: Path | None,
    runs_dir: Path,
    parameter: list[str] | None,
    allow_data_url: list[str] | None,
    launcher: str,
) -> Any:
    """The webhook server and the run queue it feeds (not started); what a crash left is removed first."""
    from workflows.engine import RunQueue, workflow_parameters
    from workflows.engine.orphans import sweep
    from workflows.pipeline import manifest
    from workflows.triggers.payload import DEFAULT_DATA_URL_PREFIXES, check_data_url_prefixes
    from workflows.triggers.webhook import EventLog, WebhookServer

    operator = parse_parameters(parameter)
    sweep()
    prefixes = check_data_url_prefixes(allow_data_url) if allow_data_url else DEFAULT_DATA_URL_PREFIXES
    token = _webhook_token(token_file)
    defaults = embedded_defaults(workflow_parameters(manifest()))
    runs = RunQueue(manifest, runs_dir, defaults, operator, launcher)
    server = WebhookServer(host, port, token, EventLog(open_store()), runs, data_url_prefixes=prefixes)
    log.info("events may name data_url under: %s", ", ".join(prefixes))
    if operator:
        log.info("every run gets: %s", " ".join(f"{k}={v}" for k, v in operator.items()))
    return server, runs


@app.command(rich_help_panel=PANEL)
def webhook(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (the EventSource's is 12000).")] = 12000,
    token_file: TokenFileOption = None,
    runs_dir: RunsDirOption = Path("runs"),
    parameter: OperatorParameterOption = None,
    allow_data_url: AllowDataUrlOption = None,
    retry_interrupted: RetryInterruptedOption = False,
) -> None:
    """The local retrain webhook: POST /retrain queues a pipeline run, like the Argo Events Sensor.

    SIGTERM or Ctrl-C stops it: the run in progress is stopped and recorded as Failed with the
    reason; accepted events not yet started are queued again at the next start.
    """
    from workflows.platform import RUN_STOP_S
    from workflows.shutdown import Shutdown, kill_descendants

    shutdown = Shutdown("fashion-pipeline webhook").install()
    server, runs = receiver(host, port, token_file, runs_dir, parameter, allow_data_url, "fashion-pipeline webhook")

    def force() -> None:
        runs.terminate(shutdown.reason)
        kill_descendants()

    shutdown.on_force(force)
    server.start()
    retry_cut_short(runs, retry_interrupted)
    requeued = server.requeue_unstarted()
    log.info(
        "listening on http://%s:%d/retrain%s",
        host,
        server.port,
        f" ({requeued} accepted event(s) queued again)" if requeued else "",
    )
    try:
        shutdown.requested.wait()
    finally:
        log.info("shutting down (%s)", shutdown.reason)
        server.shutdown()
        clean = runs.close(shutdown.reason, RUN_STOP_S)
    _stopped(shutdown, clean)


def retry_cut_short(runs: Any, retry: bool) -> None:
    """Runs a crash cut short: retried with --retry-interrupted, else named with the command that retries them."""
    interrupted = runs.interrupted()
    if retry:
        for name in interrupted:
            runs.retry(name)
    elif interrupted:
        shown = ", ".join(interrupted[-5:]) + (f" and {len(interrupted) - 5} more" if len(interrupted) > 5 else "")
        log.warning(
            "cut short by a crash: %s; `fashion-pipeline runs retry NAME` resumes one (or start with "
            "--retry-interrupted)",
            shown,
        )


def _stopped(shutdown: Any, clean: bool) -> None:
    """A service's exit status: 0 after a clean stop, non-zero when anything had to be killed."""
    from workflows.shutdown import EXIT_FORCED, EXIT_UNCLEAN

    if shutdown.forced.is_set():
        raise typer.Exit(EXIT_FORCED)
    if not clean:
        raise typer.Exit(EXIT_UNCLEAN)


@app.command(rich_help_panel=PANEL)
def up(
    host: Annotated[str, typer.Option(help="Address to bind the model server and the webhook.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Model server port.")] = 8080,
    webhook_port: Annotated[int, typer.Option(help="Webhook port.")] = 12000,
    token_file: TokenFileOption = None,
    runs_dir: RunsDirOption = Path("runs"),
    parameter: OperatorParameterOption = None,
    allow_data_url: AllowDataUrlOption = None,
    drop_poll: Annotated[
        float, typer.Option(min=0.0, help="Seconds between looks at the store's incoming/ for data drops (0: off).")
    ] = 5.0,
    retry_interrupted: RetryInterruptedOption = False,
    log_sample_rate: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Share of served requests summarised into the inference log (0: none)."),
    ] = 1.0,
    drift_check: Annotated[
        float,
        typer.Option(min=0.0, help="Seconds between drift checks of the production model's traffic (0: off)."),
    ] = 600.0,
) -> None:
    """The embedded platform: model server, webhook, data drops, drift checks and the nightly schedule, until Ctrl-C."""
    from workflows.platform import up as run_platform
    from workflows.shutdown import Shutdown
    from workflows.triggers.base import LocalTrigger
    from workflows.triggers.drops import DropWatcher
    from workflows.triggers.schedule import Scheduler

    shutdown = Shutdown("fashion-pipeline up").install()
    server, runs = receiver(host, webhook_port, token_file, runs_dir, parameter, allow_data_url, "fashion-pipeline up")
    triggers: list[LocalTrigger] = [server]
    if drop_poll > 0:
        triggers.append(DropWatcher(open_store(), runs, drop_poll))
    triggers.append(Scheduler(runs))
    registry = open_registry()
    if drift_check > 0 and log_sample_rate > 0:
        from workflows.triggers.drift import DriftWatcher

        triggers.append(DriftWatcher(registry, runs, check_s=drift_check))
    retry_cut_short(runs, retry_interrupted)
    _stopped(shutdown, run_platform(registry, host, port, triggers, runs, shutdown, log_sample_rate))


@app.command(rich_help_panel=PANEL)
def drop(
    directory: Annotated[Path, typer.Argument(help="A folder with the four Fashion-MNIST *-ubyte.gz files.")],
    drop_id: Annotated[
        str | None, typer.Option("--id", help="The drop's id (default: its drop.json's, else the folder's name).")
    ] = None,
    reason: Annotated[str | None, typer.Option(help="Why (kept in the alias history).")] = None,
    parameter: Annotated[
        list[str] | None,
        typer.Option("--parameter", "-p", help="NAME=VALUE, a training argument for this drop's run (repeatable)."),
    ] = None,
) -> None:
    """Deliver a data drop to the store's incoming/<id>/: the data first, drop.json last; prints the run's name.

    `up` (or, on a cluster, the Sensor fashion-drops) starts one run, drop-<id>, per drop.
    """
    from workflows.triggers.drops import prepare_manifest, run_name, upload_drop

    if not directory.is_dir():
        raise UserError(f"{directory} is not a directory: give the folder holding the drop's *-ubyte.gz files")
    manifest = prepare_manifest(directory, drop_id, reason, parse_parameters(parameter))
    store = open_store()
    for key in upload_drop(store, directory, manifest):
        log.info("uploaded %s", store.uri_of(key))
    typer.echo(run_name(manifest["drop_id"]))


@app.command("reconcile-drops", rich_help_panel=PANEL)
def reconcile_drops(
    namespace: Annotated[
        str | None, typer.Option(help="Where to create the Workflows (default: this pod's namespace, else fashion).")
    ] = None,
) -> None:
    """Submit drop-<id> on the cluster for each valid drop in the store's incoming/ that has no run yet.

    What the CronWorkflow fashion-drops-reconcile runs: drops MinIO's notifications never delivered start
    late, and none twice. Uses KUBECONFIG, else the pod's service account.
    """
    from steps.targets.kserve import api_client
    from workflows.triggers.drop_reconcile import DropReconciler, current_namespace

    reconciler = DropReconciler(open_store(), api_client(), namespace or current_namespace())
    outcomes = reconciler.scan()
    started = [o for o in outcomes if o.status == "submitted"]
    failed = [o for o in outcomes if o.status == "failed"]
    for outcome in outcomes:
        if outcome.status in ("submitted", "failed", "refused"):
            typer.echo(f"{outcome.status:<10} {outcome.drop_id}  {outcome.run or ''} {'; '.join(outcome.problems)}")
    log.info(
        "%d drop(s) looked at in %s: %d submitted, %d failed",
        len(outcomes),
        reconciler.store.uri_of("incoming/"),
        len(started),
        len(failed),
    )
    if failed:
        raise typer.Exit(1)
