"""The model server and its client: `serve` and `predict`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from steps.errors import UserError
from steps.serving.protocol import Protocol
from steps.targets import DEFAULT_NAMESPACE, DEFAULT_SERVER_URL
from workflows.cli.app import app, open_registry

PANEL = "Serving"


@app.command(rich_help_panel=PANEL)
def serve(
    host: Annotated[str, typer.Option(help="Address to bind (only this machine by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8080,
    poll: Annotated[float, typer.Option(help="Seconds between checks of the registry's aliases.")] = 2.0,
    storage_uri: Annotated[
        str, typer.Option(help="Serve this one version root instead of the registry's aliases (as KServe does).")
    ] = "",
    precision: Annotated[
        str, typer.Option(help="Inference precision: auto (bfloat16 where the CPU has it), bfloat16, float32.")
    ] = "auto",
    inference_threads: Annotated[int, typer.Option(help="TensorFlow intra-op threads (0 = all cores).")] = 1,
    access_log: Annotated[bool, typer.Option(help="Log every request.")] = False,
    workers: Annotated[
        int, typer.Option(help="Server processes sharing the port, each with its own copy of the model.")
    ] = 1,
    reuse_port: Annotated[bool, typer.Option(hidden=True)] = False,
    log_sample_rate: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Share of requests summarised into the store's inference log (0: none)."),
    ] = 0.0,
    log_images: Annotated[bool, typer.Option(help="Keep the raw images in the inference log too.")] = False,
    log_batch: Annotated[int, typer.Option(min=1, help="Records per inference-log object written.")] = 512,
) -> None:
    """Serve the production model with KServe's model server (V1 and V2 protocols, /metrics).

    SIGTERM or Ctrl-C: readiness off, requests in flight answered, port freed; a second signal forces.
    """
    from workflows.shutdown import Shutdown

    shutdown = Shutdown("serve").install()
    registry = None
    if not storage_uri:
        registry = open_registry()
        if registry.alias("production") is None:
            raise UserError(f"nothing to serve: no production model in {registry.store.uri} (run the pipeline first)")
    if workers > 1:
        from steps.serving.workers import supervise, worker_argv

        if not supervise(worker_argv(sys.argv), workers, shutdown):
            raise typer.Exit(1)
        return
    sys.argv = sys.argv[:1]  # `import kserve` parses the command line
    from steps.serving.server import build_server

    server = build_server(
        registry,
        host,
        port,
        poll,
        storage_uri,
        precision,
        inference_threads,
        access_log,
        reuse_port,
        log_sample_rate,
        log_images,
        log_batch,
    )
    shutdown.on_stop(server.stop)
    shutdown.on_force(server.force)
    server.run()
    if shutdown.forced.is_set():
        raise typer.Exit(1)


@app.command(rich_help_panel=PANEL)
def predict(
    images: Annotated[list[Path], typer.Argument(help="PNG or JPEG files, any size.")],
    url: Annotated[str, typer.Option(help="The model server or InferenceService URL.")] = DEFAULT_SERVER_URL,
    protocol: Annotated[
        Protocol, typer.Option(help="The wire protocol (steps/serving/protocol.py CODECS): v1 TF Serving JSON, v2 OIP.")
    ] = Protocol.V1,
    host_header: Annotated[
        str | None, typer.Option(help="Host header, for an InferenceService behind an ingress.")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for an answer.")] = 10.0,
) -> None:
    """Classify images with a running model server; prints class and probability per image."""
    import numpy as np

    from steps.serving.client import PredictionClient, load_image

    batch = np.stack([load_image(path) for path in images])
    client = PredictionClient(url, protocol=protocol, timeout_s=timeout, host_header=host_header)
    predictions = client.predict(batch)
    width = max(len(str(path)) for path in images)
    typer.echo(f"{'image':<{width}}  {'class':<12} {'probability':>11}  version")
    for path, prediction in zip(images, predictions, strict=True):
        typer.echo(
            f"{path!s:<{width}}  {prediction.class_name:<12} {prediction.probability:>11.4f}  "
            f"{prediction.version or '-'}"
        )


@app.command(rich_help_panel=PANEL)
def monitor(
    version: Annotated[str, typer.Option(help="The served version to check: a version id or an alias.")] = "production",
    window: Annotated[float | None, typer.Option(help="Seconds of traffic to look at (default 3600).")] = None,
    end: Annotated[float | None, typer.Option(help="Where the window ends, Unix seconds (default: now).")] = None,
    min_records: Annotated[int | None, typer.Option(help="Fewest records for a verdict (default 200).")] = None,
    max_psi: Annotated[float | None, typer.Option(help="Largest PSI of predicted classes (default 0.2).")] = None,
    max_ks: Annotated[float | None, typer.Option(help="Largest KS statistic of an input statistic (0.25).")] = None,
    max_low_confidence_rate: Annotated[
        float | None, typer.Option(help="Largest share of low-confidence answers (default 0.3).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Where drift.json and drift.png go.")] = Path("outputs/monitor"),
) -> None:
    """Measure drift: a window of the inference log (`serve --log-sample-rate`) against the model's training data.

    Prints the verdict and each measure; the report (JSON and PNG) goes to --out and into the store.
    """
    import time
    from dataclasses import replace

    from steps.drift import DriftPolicy, check_drift, verdict
    from steps.parameters import check

    given: dict[str, Any] = {
        "window_s": window,
        "min_records": min_records,
        "max_psi": max_psi,
        "max_ks": max_ks,
        "max_low_confidence_rate": max_low_confidence_rate,
    }
    policy = replace(DriftPolicy(), **{k: v for k, v in given.items() if v is not None})
    check(policy)
    registry = open_registry()
    served = registry.resolve(version)
    report = check_drift(registry, served, time.time() if end is None else end, policy, out)
    skipped = report["skipped"]["count"]
    typer.echo(f"version     {served}")
    typer.echo(f"window      {policy.window_s:g} s: {report['window']['records']} records ({skipped} skipped)")
    typer.echo(f"verdict     {verdict(report)}: {report['reason']}")
    for name, measured in report.get("measures", {}).items():
        mark = "✗" if measured["drifted"] else "✓"
        typer.echo(f"  {mark} {name:<20} {measured['value']:.4f}  threshold {measured['threshold']:g}")
    typer.echo(f"report      {out / 'drift.json'}, {out / 'drift.png'}; {report['report_uri']}")


@app.command("log-sink", rich_help_panel=PANEL)
def log_sink(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port KServe's logger posts to.")] = 8080,
    sample_rate: Annotated[float, typer.Option(min=0.0, max=1.0, help="Share of requests kept.")] = 1.0,
    batch: Annotated[int, typer.Option(min=1, help="Records per inference-log object written.")] = 512,
) -> None:
    """Receive KServe's logger CloudEvents (the InferenceService's `logger.url`) into the store's inference log.

    On a cluster this runs as the Deployment fashion-log-sink (argo/monitoring.yaml); `monitor` reads what it writes.
    """
    from steps.monitoring import InferenceLog, LogSink
    from steps.registry import MODEL_NAME
    from steps.serving.log_sink import LogSinkServer
    from workflows.shutdown import Shutdown

    shutdown = Shutdown("log-sink").install()
    inference_log = InferenceLog(open_registry().store, MODEL_NAME, sample_rate, batch_records=batch)
    inference_log.start()
    server = LogSinkServer(host, port, LogSink(inference_log))
    server.start()
    typer.echo(f"log-sink: POST http://{host}:{server.port}/?version=<version> (KServe logger CloudEvents)")
    shutdown.requested.wait()
    server.stop()


@app.command("drift-check", rich_help_panel=PANEL)
def drift_check(
    namespace: Annotated[str, typer.Option(help="The namespace of the retrain webhook.")] = DEFAULT_NAMESPACE,
    webhook_url: Annotated[
        str | None, typer.Option(help="The retrain webhook (default: the namespace's EventSource service).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Where drift.json and drift.png go.")] = Path("outputs/drift"),
) -> None:
    """One drift check of the production model; a new drift episode POSTs one retrain to the webhook.

    What the CronWorkflow fashion-drift-check runs on a cluster. The token comes from
    FASHION_PIPELINE_WEBHOOK_TOKEN; the thresholds are the operator's (DriftPolicy defaults).
    """
    import os

    from steps.drift import verdict
    from workflows.triggers.drift import WebhookDrift
    from workflows.triggers.webhook_sensor import webhook_url as default_url

    token = os.environ.get("FASHION_PIPELINE_WEBHOOK_TOKEN", "")
    checker = WebhookDrift(open_registry(), webhook_url or default_url(namespace), token)
    report = checker.check(out=out)
    typer.echo(f"{report['version']}: {verdict(report)}: {report['reason']}")
    typer.echo(f"report      {out / 'drift.json'}, {out / 'drift.png'}; {report['report_uri']}")
