"""`fashion-pipeline`: one sub-command per pipeline step, run exactly as a workflow container runs it.

Each step writes its Argo output parameters as files into `--out` (one value per file) next to
its reports, logs progress on stderr, and prints a summary on stdout.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from steps import hardware
from steps.errors import UserError
from workflows.runs_cli import runs_app

app = typer.Typer(
    name="fashion-pipeline",
    help="Fetch Fashion-MNIST, train, evaluate, gate and register models; run the pipeline locally.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,  # `--install-completion`: run names complete from the runs directory
)
models_app = typer.Typer(help="The model registry: versions, model cards and aliases.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(runs_app, name="runs")

DEFAULT_STORE = "store"
VERBOSE_ENV = "FASHION_PIPELINE_VERBOSE"


class YesNo(StrEnum):
    yes = "true"
    no = "false"


log = logging.getLogger("fashion_pipeline")


class _State:
    store_uri: str = DEFAULT_STORE


STATE = _State()


@app.callback()
def _global(
    store: Annotated[
        str,
        typer.Option(
            envvar="FASHION_PIPELINE_STORE",
            help="Where datasets and models live: a path, file:///path or s3://bucket/prefix.",
        ),
    ] = DEFAULT_STORE,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            "-v",
            envvar=VERBOSE_ENV,
            help="Log everything: debug detail and TensorFlow's own C++ log, here and in the processes started.",
        ),
    ] = False,
) -> None:
    STATE.store_uri = store
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    if verbose:
        # Inherited by the pipeline's nodes and the model server, which then log everything too.
        os.environ[VERBOSE_ENV] = "1"
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        return
    for noisy in ("urllib3", "matplotlib", "absl", "tensorflow", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # TensorFlow's C++ banner lines are noise to a user; keep warnings and errors.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _store() -> Any:
    from steps.storage import open_store

    return open_store(STATE.store_uri)


def _registry() -> Any:
    from steps.registry import Registry

    return Registry(_store())


def _write_outputs(out: Path, values: dict[str, Any]) -> None:
    """One file per output parameter, as Argo's `valueFrom.path` reads them."""
    out.mkdir(parents=True, exist_ok=True)
    for name, value in values.items():
        text = value if isinstance(value, str) else json.dumps(value)
        (out / name).write_text(text)


def _summary(values: dict[str, Any]) -> None:
    width = max(len(k) for k in values)
    for key, value in values.items():
        typer.echo(f"{key:<{width}}  {value}")


OutOption = Annotated[Path, typer.Option(help="Directory for output parameters and reports.")]


@app.command()
def fetch(
    data_url: Annotated[
        str, typer.Option(help="A custom drop or mirror tried first: http(s)://, file://, s3:// or a path.")
    ] = "",
    out: OutOption = Path("outputs/fetch"),
) -> None:
    """Fetch Fashion-MNIST from the first valid mirror into the store (once per digest)."""
    from steps.dataset import fetch_dataset, mirror_chain
    from steps.lineage import lineage_record, write_lineage
    from workflows import trigger

    mirrors = mirror_chain(data_url or None, os.environ.get("FASHION_MNIST_MIRROR"))
    store = _store()
    result = fetch_dataset(store, mirrors)
    raw_trigger = os.environ.get(trigger.ENV)
    started = trigger.read(raw_trigger) if raw_trigger else {"by": "cli", "via": "fetch"}
    lineage = lineage_record(result, data_url or None, os.environ.get("FASHION_PIPELINE_WORKFLOW") or None, started)
    lineage_uri = write_lineage(store, lineage)
    out.mkdir(parents=True, exist_ok=True)
    (out / "lineage.json").write_text(json.dumps(lineage, indent=2) + "\n")
    values = {
        "dataset_uri": result.uri,
        "dataset_digest": result.digest,
        "cache_hit": "true" if result.cache_hit else "false",
        "canonical": "true" if result.canonical else "false",
        "source": result.source,
    }
    _write_outputs(out, values)
    drop = lineage["drop"] or {}
    _summary(
        {
            **values,
            "counts": f"{result.counts['train']} train, {result.counts['test']} test",
            **({"drop": drop.get("drop_id", "unreadable drop.json")} if lineage["drop"] else {}),
            "lineage": lineage_uri,
        }
    )


def _default_dataset(dataset: str) -> str:
    if dataset:
        return dataset
    from steps.dataset import canonical_dataset_uri

    uri = canonical_dataset_uri(_store())
    if uri is None:
        raise UserError(f"no dataset in {STATE.store_uri}: run `fashion-pipeline fetch` first or pass --dataset")
    return uri


DatasetOption = Annotated[
    str, typer.Option(help="Dataset URI written by fetch (default: the canonical dataset in the store).")
]


@app.command()
def train(
    dataset: DatasetOption = "",
    epochs: Annotated[int | None, typer.Option(help="Passes over the train split (default 8).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per step (default 128).")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="Peak learning rate (default 0.003).")] = None,
    seed: int = 42,
    architecture: Annotated[str | None, typer.Option(help="fast-cnn, wide-cnn or small-cnn.")] = None,
    train_limit: Annotated[int, typer.Option(help="Train on this many images (0 = all).")] = 0,
    precision: Annotated[str | None, typer.Option(help="auto, mixed_bfloat16 or float32.")] = None,
    threads: Annotated[
        int,
        typer.Option(
            envvar=hardware.CPU_LIMIT_ENV,
            help="TensorFlow threads (0 = one per host core); in a pod, its limits.cpu through the downward API.",
        ),
    ] = 0,
    out: OutOption = Path("outputs/train"),
) -> None:
    """Train the CNN, export a SavedModel and publish it as a new registry version."""
    from steps.registry import code_version
    from steps.train import TrainParams
    from steps.train import train as run_train

    defaults = TrainParams()
    params = TrainParams(
        epochs=defaults.epochs if epochs is None else epochs,
        batch_size=defaults.batch_size if batch_size is None else batch_size,
        learning_rate=defaults.learning_rate if learning_rate is None else learning_rate,
        seed=seed,
        architecture=architecture or defaults.architecture,
        train_limit=train_limit,
        precision=precision or defaults.precision,
    )
    params.check()
    workflow = os.environ.get("FASHION_PIPELINE_WORKFLOW") or None
    result = run_train(
        _default_dataset(dataset), _registry(), params, out, code_version(), workflow, _epoch_progress(), threads
    )
    values = {"model_version": result.version, "model_uri": result.version_uri}
    _write_outputs(out, values)
    final = {k: v[-1] for k, v in result.history.items() if v}
    _summary({**values, "train_seconds": f"{result.train_seconds:.1f}", **{k: f"{v:.4f}" for k, v in final.items()}})


def _epoch_progress() -> Any:
    """Epochs as progress `k/N`, with the latest validation accuracy, when Argo or the engine asks for it."""
    from workflows.node_watch import PROGRESS_ENV, write_progress

    path = os.environ.get(PROGRESS_ENV)
    if not path:
        return None

    def report(done: int, epochs: int, metrics: dict[str, float]) -> None:
        accuracy = metrics.get("val_accuracy")
        status = f"epoch {done}/{epochs}" + (f", val accuracy {accuracy:.4f}" if accuracy is not None else "")
        try:
            write_progress(path, done, epochs, status)
        except OSError as exc:  # progress is for watchers: training goes on without it
            log.debug("cannot write progress to %s: %s", path, exc)

    return report


@app.command()
def evaluate(
    dataset: DatasetOption = "",
    model: Annotated[str, typer.Option(help="Candidate: a version id, an alias, or 'latest'.")] = "latest",
    champion: Annotated[
        str, typer.Option(help="Champion: a version id or alias; 'none' to skip (default: production).")
    ] = "production",
    out: OutOption = Path("outputs/evaluate"),
) -> None:
    """Evaluate the candidate and the champion on the test split; compare them with McNemar's test."""
    from steps.evaluate import evaluate as run_evaluate

    registry = _registry()
    candidate = registry.resolve(model)
    champion_version = None
    if champion != "none":
        if champion == "production" and registry.alias("production") is None:
            champion_version = None
        else:
            champion_version = registry.resolve(champion)
    evaluation = run_evaluate(_default_dataset(dataset), registry, candidate, champion_version, out)
    metrics = evaluation.metrics
    values = {
        "metrics_uri": evaluation.record_uri,
        "accuracy": str(metrics["candidate"]["accuracy"]),
        "champion_version": champion_version or "",
        "champion_accuracy": str(metrics["champion"]["accuracy"]) if metrics["champion"] else "",
        "p_value": str(metrics["comparison"]["p_value"]) if metrics["comparison"] else "",
    }
    _write_outputs(out, values)
    _summary({"candidate": candidate, **values, "report": out / "metrics.json"})


@app.command()
def gate(
    metrics: Annotated[
        str, typer.Option(help="evaluate's metrics: a metrics.json path, or its record's URI in the store.")
    ] = "outputs/evaluate/metrics.json",
    min_accuracy: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.90,
    min_class_recall: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.60,
    min_delta: Annotated[float, typer.Option(min=-1.0, max=1.0)] = 0.0,
    alpha: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.05,
    allow_equal: Annotated[
        YesNo, typer.Option(help="Accept a non-inferior candidate (within --tolerance) instead.")
    ] = YesNo.no,
    tolerance: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.005,
    first_run: Annotated[str, typer.Option(help="With no champion: promote or reject.")] = "promote",
    force: Annotated[bool, typer.Option(help="Promote whatever the checks say (needs --force-reason).")] = False,
    force_reason: str = "",
    out: OutOption = Path("outputs/gate"),
) -> None:
    """Apply the promotion policy to evaluate's metrics and write the decision record."""
    from steps.gate import Policy, decide, policy_sources
    from steps.report import data_lines, model_card_markdown
    from workflows import trigger

    metrics_data = _read_metrics(metrics)
    policy = Policy(
        min_accuracy=min_accuracy,
        min_class_recall=min_class_recall,
        min_delta=min_delta,
        alpha=alpha,
        allow_equal=allow_equal == YesNo.yes,
        tolerance=tolerance,
        first_run=first_run,
        force=force,
        force_reason=force_reason,
    )
    record = decide(metrics_data, policy)
    registry = _registry()
    record["workflow"] = os.environ.get("FASHION_PIPELINE_WORKFLOW") or None
    started = trigger.read(os.environ.get(trigger.ENV))
    record["trigger"] = started
    record["policy_sources"] = policy_sources(policy, trigger.operator_values(started), str(started.get("via")))
    if record["candidate"]:
        registry.add_record(record["candidate"], "decisions", record)
    out.mkdir(parents=True, exist_ok=True)
    (out / "decision.json").write_text(json.dumps(record, indent=2) + "\n")
    card = registry.card(record["candidate"]) if record["candidate"] else {}
    champion = (metrics_data.get("champion") or {}).get("version")
    data = data_lines(registry, record["candidate"], champion) if record["candidate"] else None
    (out / "model-card.md").write_text(model_card_markdown(card, metrics_data, record, data))
    _write_outputs(out, {"decision": record["decision"], "model_version": record["candidate"] or ""})
    _summary({"decision": record["decision"], "reasons": "; ".join(record["reasons"]), "record": out / "decision.json"})


def _read_metrics(location: str) -> Any:
    if "://" in location:
        from steps.storage import open_store

        parent, _, name = location.rpartition("/")
        return open_store(parent).read_json(name)
    try:
        return json.loads(Path(location).read_text())
    except FileNotFoundError as exc:
        raise UserError(f"metrics file {location} not found: run `fashion-pipeline evaluate` first") from exc
    except json.JSONDecodeError as exc:
        raise UserError(f"metrics file {location} is not valid JSON ({exc})") from exc


@app.command()
def rollout(
    model: Annotated[str, typer.Option(help="The version to roll out: a version id, an alias, or 'latest'.")],
    dataset: DatasetOption = "",
    target: Annotated[str, typer.Option(help="local (the embedded default) or kserve.")] = "local",
    canary_percent: Annotated[int, typer.Option(help="Traffic share of the canary while it is probed.")] = 10,
    reason: Annotated[str, typer.Option(help="Why (kept in the alias history).")] = "rollout",
    server_url: Annotated[
        str,
        typer.Option(
            envvar="FASHION_PIPELINE_SERVER_URL",
            help="local target: the model server (if none answers, the registry is promoted).",
        ),
    ] = "http://127.0.0.1:8080",
    namespace: Annotated[str, typer.Option(help="kserve target: the InferenceService's namespace.")] = "fashion",
    probe_url: Annotated[
        str | None,
        typer.Option(
            envvar="FASHION_PIPELINE_PROBE_URL",
            help="kserve target: probe through this base URL (e.g. a port-forward to the ingress) with a Host header.",
        ),
    ] = None,
    ready_timeout: Annotated[float, typer.Option(help="Seconds the canary may take to become ready.")] = 300.0,
    serving_runtime: Annotated[
        str,
        typer.Option(
            help="kserve target: tensorflow (TF Serving, amd64 images only) or custom (this image's own server)."
        ),
    ] = "tensorflow",
    serving_image: Annotated[
        str | None,
        typer.Option(help="kserve target, custom runtime: the image to run (default: the step image)."),
    ] = None,
    out: OutOption = Path("outputs/rollout"),
) -> None:
    """Roll a version out: preflight, canary, probe, then promote or roll back automatically."""
    from steps.rollout import TARGETS, RolloutPolicy
    from steps.rollout import rollout as run_rollout
    from workflows import trigger

    if target not in TARGETS:
        raise UserError(f"unknown rollout target {target!r}: choose one of {', '.join(TARGETS)}")
    registry = _registry()
    policy = RolloutPolicy(canary_percent=canary_percent, ready_timeout_s=ready_timeout)
    policy.check()
    chosen: Any = None
    if target == "kserve":
        from steps.targets.kserve import KServeTarget
        from workflows.templates import IMAGE

        chosen = KServeTarget(
            namespace=namespace,
            probe_url=probe_url,
            serving_runtime=serving_runtime,
            serving_image=serving_image or IMAGE,
            restore_timeout_s=ready_timeout,
        )
    else:
        from steps.targets.local import LocalTarget

        local = LocalTarget(registry, server_url)
        if local.server_running():
            chosen = local
        else:
            log.info("no local model server answers at %s: promoting in the registry only", server_url)
    out.mkdir(parents=True, exist_ok=True)
    audit = {
        "workflow": os.environ.get("FASHION_PIPELINE_WORKFLOW") or None,
        "trigger": trigger.read(os.environ.get(trigger.ENV)),
    }
    try:
        record = run_rollout(
            registry, registry.resolve(model), _default_dataset(dataset), chosen, policy, reason, out, audit
        )
    finally:
        written = out / "rollout.json"
        if written.exists():
            outcome = json.loads(written.read_text())
            _write_outputs(out, {"outcome": outcome["outcome"], "served_version": outcome.get("served_version") or ""})
    _summary({"outcome": record["outcome"], "version": record["version"], "target": record["target"]})


@app.command()
def report(
    workflow: Annotated[str, typer.Option(help="The workflow run to summarise.")],
    status: Annotated[str, typer.Option(help="The run's status ({{workflow.status}}).")] = "Unknown",
    failures: Annotated[str, typer.Option(help="Argo's {{workflow.failures}} JSON.")] = "",
    out: OutOption = Path("outputs/report"),
) -> None:
    """The exit report of a run: what it trained, what the gate decided, what is in production."""
    from steps.report import run_summary

    summary = run_summary(_registry(), workflow, status, failures)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text(summary)
    typer.echo(summary, nl=False)


def _embedded_defaults(declared: dict[str, str]) -> dict[str, str]:
    """What differs on a laptop: the local store, a local rollout target, S3 only if configured."""
    from steps.storage import open_store

    defaults = {
        "store": open_store(STATE.store_uri).uri,
        "rollout_target": "local",
        "s3_endpoint": os.environ.get("S3_ENDPOINT", ""),
    }
    return {k: v for k, v in defaults.items() if k in declared}


def _parameters(items: list[str] | None) -> dict[str, str]:
    """`-p NAME=VALUE` options as a dict (checked against the workflow by the engine or the run queue)."""
    overrides = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"-p {item!r}: use NAME=VALUE")
        overrides[key.strip()] = value
    return overrides


ParameterOption = Annotated[
    list[str] | None, typer.Option("--parameter", "-p", help="NAME=VALUE, as with `argo submit -p`.")
]


def _file_store(values: dict[str, str]) -> Path | None:
    """The directory of a file store the nodes use (a container runtime mounts it at the same path)."""
    from steps.storage import open_store

    store = values.get("store")
    if not store or store.startswith("s3://"):
        return None
    return Path(open_store(store).uri.removeprefix("file://"))


@app.command()
def run(
    parameter: ParameterOption = None,
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="A compiled Workflow(Template) YAML (default: compiled now).")
    ] = None,
    name: Annotated[str | None, typer.Option(help="The run's name (default: template name + random suffix).")] = None,
    runs_dir: Annotated[Path, typer.Option(help="Where run records and node logs go.")] = Path("runs"),
    runtime: Annotated[
        str,
        typer.Option(
            help="Where each node runs: process (this Python environment), or podman, docker, container "
            "(whichever is installed): the template's image, as its pod runs on a cluster."
        ),
    ] = "process",
    image: Annotated[
        str | None, typer.Option(help="With a container runtime: run every node in this image instead.")
    ] = None,
    output: Annotated[
        str, typer.Option("--output", "-o", help="text: the result in words; json: the run record, for scripts.")
    ] = "text",
) -> None:
    """Run the pipeline on the local engine: the same compiled workflow `argo submit` sends.

    SIGTERM or Ctrl-C stops it like `argo stop` (the exit handler still runs; a second signal skips
    it) and records the run as Failed with the reason.
    """
    from workflows.engine import Engine, load_manifest, resolve_parameters, workflow_parameters
    from workflows.progress import Progress
    from workflows.runtime import make_runtime
    from workflows.shutdown import Shutdown, kill_descendants

    if output not in OUTPUT_FORMATS:
        raise UserError(f"--output {output!r}: use one of {', '.join(OUTPUT_FORMATS)}")

    if file is not None:
        manifest = load_manifest(file)
    else:
        from workflows.pipeline import manifest as compiled

        manifest = compiled()
    from workflows import trigger

    overrides = _parameters(parameter)
    if trigger.ARGUMENT in overrides:
        raise UserError(f"-p {trigger.ARGUMENT}: set by the launcher (it records how each run started)")
    declared = workflow_parameters(manifest)
    values = {**_embedded_defaults(declared), **overrides}
    if trigger.ARGUMENT in declared:
        values[trigger.ARGUMENT] = trigger.summary("cli", "fashion-pipeline run", user=_user(), operator=overrides)
    node_runtime = make_runtime(runtime, image=image, file_store=_file_store(resolve_parameters(manifest, values)))
    shutdown = Shutdown("fashion-pipeline run").install()
    with Progress() as progress:
        engine = Engine(manifest, runs_dir, values, name=name, on_update=progress.update, runtime=node_runtime)
        shutdown.on_stop(lambda: engine.stop(shutdown.reason))

        def force() -> None:
            engine.terminate(shutdown.reason)
            kill_descendants()

        shutdown.on_force(force)
        result = engine.execute()
    progress.final(result)
    _print_result(result.record(), result.directory, output)
    if result.phase != "Succeeded":
        raise typer.Exit(shutdown.exit_status() if shutdown.requested.is_set() else 1)


OUTPUT_FORMATS = ("text", "json")


def _print_result(record: dict[str, Any], run_dir: Path, output: str) -> None:
    """What a run produced, on stdout: its summary in words, or its record as JSON."""
    from workflows.run_summary import lines, summarise

    if output == "json":
        typer.echo(json.dumps(record, indent=2))
    else:
        typer.echo("\n".join(lines(summarise(record, run_dir))))


@app.command()
def render(
    check: Annotated[bool, typer.Option("--check", help="Exit non-zero if argo/ is stale; write nothing.")] = False,
    out: Annotated[Path, typer.Option(help="The manifests directory.")] = Path("argo"),
) -> None:
    """Compile the Hera workflows into argo/ (deterministic YAML)."""
    from workflows.render import render as write
    from workflows.render import stale

    if check:
        outdated = stale(out)
        if outdated:
            raise UserError(f"{', '.join(outdated)} is stale: run `fashion-pipeline render` and commit the result")
        typer.echo(f"{out}/ is up to date")
        return
    written = write(out)
    typer.echo("\n".join(f"wrote {path}" for path in written) or f"{out}/ was already up to date")


@app.command()
def lint(
    paths: Annotated[list[Path] | None, typer.Argument(help="Manifest files or directories (default: argo/).")] = None,
    schemas: Annotated[
        Path | None,
        typer.Option(envvar="FASHION_PIPELINE_SCHEMAS", help="Directory with the pinned upstream schemas."),
    ] = None,
) -> None:
    """Validate manifests strictly against the Argo, Argo Events, KServe and Kubernetes schemas."""
    from workflows.validate import lint_paths

    targets = paths or [Path("argo")]
    for target in targets:
        if not target.exists():
            raise UserError(f"{target} does not exist")
    problems = lint_paths(targets, schemas or Path("schemas"))
    for problem in problems:
        typer.echo(str(problem), err=True)
    if problems:
        raise UserError(f"{len(problems)} problem(s) in {', '.join(map(str, targets))}")
    typer.echo(f"{', '.join(map(str, targets))}: no problems")


@app.command()
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
) -> None:
    """Serve the production model with KServe's model server (V1 and V2 protocols, /metrics).

    SIGTERM or Ctrl-C: readiness off, requests in flight answered, port freed; a second signal forces.
    """
    from workflows.shutdown import Shutdown

    shutdown = Shutdown("serve").install()
    registry = None
    if not storage_uri:
        registry = _registry()
        if registry.alias("production") is None:
            raise UserError(f"nothing to serve: no production model in {registry.store.uri} (run the pipeline first)")
    if workers > 1:
        from workflows.serve_workers import supervise, worker_argv

        if not supervise(worker_argv(sys.argv), workers, shutdown):
            raise typer.Exit(1)
        return
    sys.argv = sys.argv[:1]  # `import kserve` parses the command line
    from steps.serving import build_server

    server = build_server(registry, host, port, poll, storage_uri, precision, inference_threads, access_log, reuse_port)
    shutdown.on_stop(server.stop)
    shutdown.on_force(server.force)
    server.run()
    if shutdown.forced.is_set():
        raise typer.Exit(1)


@app.command()
def predict(
    images: Annotated[list[Path], typer.Argument(help="PNG or JPEG files, any size.")],
    url: Annotated[str, typer.Option(help="The model server or InferenceService URL.")] = "http://127.0.0.1:8080",
    protocol: Annotated[str, typer.Option(help="v1 (TF Serving JSON) or v2 (Open Inference Protocol).")] = "v1",
    host_header: Annotated[
        str | None, typer.Option(help="Host header, for an InferenceService behind an ingress.")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for an answer.")] = 10.0,
) -> None:
    """Classify images with a running model server; prints class and probability per image."""
    import numpy as np

    from steps.client import PredictionClient, load_image

    batch = np.stack([load_image(path) for path in images])
    client = PredictionClient(url, protocol=protocol, timeout=timeout, host_header=host_header)
    predictions = client.predict(batch)
    width = max(len(str(path)) for path in images)
    typer.echo(f"{'image':<{width}}  {'class':<12} {'probability':>11}  version")
    for path, prediction in zip(images, predictions, strict=True):
        typer.echo(
            f"{path!s:<{width}}  {prediction.class_name:<12} {prediction.probability:>11.4f}  "
            f"{prediction.version or '-'}"
        )


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


def _receiver(
    host: str,
    port: int,
    token_file: Path | None,
    runs_dir: Path,
    parameter: list[str] | None,
    allow_data_url: list[str] | None,
    launcher: str,
) -> Any:
    from workflows.engine import workflow_parameters
    from workflows.payload import DEFAULT_DATA_URL_PREFIXES, check_data_url_prefixes
    from workflows.pipeline import manifest
    from workflows.webhook import EventLog, RunQueue, WebhookServer

    operator = _parameters(parameter)
    prefixes = check_data_url_prefixes(allow_data_url) if allow_data_url else DEFAULT_DATA_URL_PREFIXES
    token = _webhook_token(token_file)
    defaults = _embedded_defaults(workflow_parameters(manifest()))
    runs = RunQueue(manifest, runs_dir, defaults, operator, launcher)
    receiver = WebhookServer(host, port, token, EventLog(_store()), runs, data_url_prefixes=prefixes)
    log.info("events may name data_url under: %s", ", ".join(prefixes))
    if operator:
        log.info("every run gets: %s", " ".join(f"{k}={v}" for k, v in operator.items()))
    return receiver, runs


TokenFileOption = Annotated[
    Path | None, typer.Option(help="File holding the bearer token (default: $FASHION_PIPELINE_WEBHOOK_TOKEN).")
]
RunsDirOption = Annotated[Path, typer.Option(help="Where run records and node logs go.")]
OperatorParameterOption = Annotated[
    list[str] | None,
    typer.Option(
        "--parameter",
        "-p",
        help="NAME=VALUE for every run started here, gate policy included (events cannot set the policy).",
    ),
]
AllowDataUrlOption = Annotated[
    list[str] | None,
    typer.Option(
        help="A data_url prefix events may name, e.g. https://data.example.com/ (repeatable; replaces the "
        "default https:// and s3://)."
    ),
]


@app.command()
def webhook(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (the EventSource's is 12000).")] = 12000,
    token_file: TokenFileOption = None,
    runs_dir: RunsDirOption = Path("runs"),
    parameter: OperatorParameterOption = None,
    allow_data_url: AllowDataUrlOption = None,
) -> None:
    """The local retrain webhook: POST /retrain queues a pipeline run, like the Argo Events Sensor.

    SIGTERM or Ctrl-C stops it: the run in progress is stopped and recorded as Failed with the
    reason; accepted events not yet started are queued again at the next start.
    """
    from workflows.platform import RUN_STOP_S
    from workflows.shutdown import Shutdown, kill_descendants

    shutdown = Shutdown("fashion-pipeline webhook").install()
    receiver, runs = _receiver(host, port, token_file, runs_dir, parameter, allow_data_url, "fashion-pipeline webhook")

    def force() -> None:
        runs.terminate(shutdown.reason)
        kill_descendants()

    shutdown.on_force(force)
    receiver.start()
    requeued = receiver.requeue_unstarted()
    log.info(
        "listening on http://%s:%d/retrain%s",
        host,
        receiver.port,
        f" ({requeued} accepted event(s) queued again)" if requeued else "",
    )
    try:
        shutdown.requested.wait()
    finally:
        log.info("shutting down (%s)", shutdown.reason)
        receiver.shutdown()
        clean = runs.close(shutdown.reason, RUN_STOP_S)
    _stopped(shutdown, clean)


def _stopped(shutdown: Any, clean: bool) -> None:
    """A service's exit status: 0 after a clean stop, non-zero when anything had to be killed."""
    from workflows.shutdown import EXIT_FORCED, EXIT_UNCLEAN

    if shutdown.forced.is_set():
        raise typer.Exit(EXIT_FORCED)
    if not clean:
        raise typer.Exit(EXIT_UNCLEAN)


@app.command()
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
) -> None:
    """The embedded platform: model server, retrain webhook, data drops and the nightly schedule, until Ctrl-C."""
    from workflows.drops import DropWatcher
    from workflows.platform import up as run_platform
    from workflows.shutdown import Shutdown

    shutdown = Shutdown("fashion-pipeline up").install()
    receiver, runs = _receiver(
        host, webhook_port, token_file, runs_dir, parameter, allow_data_url, "fashion-pipeline up"
    )
    drops = DropWatcher(_store(), runs, drop_poll) if drop_poll > 0 else None
    _stopped(shutdown, run_platform(_registry(), host, port, receiver, runs, shutdown, drops))


@app.command()
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
    from workflows.drops import prepare_manifest, run_name, upload_drop

    if not directory.is_dir():
        raise UserError(f"{directory} is not a directory: give the folder holding the drop's *-ubyte.gz files")
    manifest = prepare_manifest(directory, drop_id, reason, _parameters(parameter))
    store = _store()
    for key in upload_drop(store, directory, manifest):
        log.info("uploaded %s", store.uri_of(key))
    typer.echo(run_name(manifest["drop_id"]))


@models_app.command("list")
def models_list() -> None:
    """Registered versions with their accuracy and aliases."""
    registry = _registry()
    aliases = _aliases_by_version(registry)
    versions = registry.versions()
    if not versions:
        typer.echo(f"no model versions in {registry.store.uri}")
        return
    typer.echo(f"{'version':<24} {'accuracy':>8}  {'architecture':<12} {'aliases'}")
    for version in versions:
        card = registry.card(version)
        evaluations = registry.records(version, "evaluations")
        accuracy = f"{evaluations[-1]['candidate']['accuracy']:.4f}" if evaluations else "-"
        arch = card.get("params", {}).get("architecture", "?")
        typer.echo(f"{version:<24} {accuracy:>8}  {arch:<12} {', '.join(aliases.get(version, []))}")


def _aliases_by_version(registry: Any) -> dict[str, list[str]]:
    result: dict[str, list[str]] = {}
    for alias in ("production", "canary"):
        pointer = registry.alias(alias)
        if pointer:
            result.setdefault(pointer["version"], []).append(alias)
    return result


@models_app.command("show")
def models_show(
    ref: Annotated[str, typer.Argument(help="A version id, an alias, or 'latest'.")] = "production",
) -> None:
    """The model card of a version, with its evaluations and gate decisions."""
    registry = _registry()
    version = registry.resolve(ref)
    shown = {
        "card": registry.card(version),
        "storage_uri": registry.version_uri(version),
        "evaluations": registry.records(version, "evaluations"),
        "decisions": registry.records(version, "decisions"),
    }
    typer.echo(json.dumps(shown, indent=2))


@models_app.command("promote")
def models_promote(
    ref: Annotated[str, typer.Argument(help="A version id, an alias, or 'latest'.")],
    reason: Annotated[str, typer.Option(help="Why (kept in the alias history).")] = "",
    alias: str = "production",
) -> None:
    """Point an alias (default: production) at a version, by hand."""
    registry = _registry()
    pointer = registry.set_alias(alias, registry.resolve(ref), reason, actor=f"cli:{_user()}")
    _summary({"alias": alias, "version": pointer["version"], "previous": pointer["previous"] or "-"})


@models_app.command("history")
def models_history(alias: str = "production") -> None:
    """Every change of an alias, oldest first."""
    for entry in _registry().history(alias):
        was = entry["previous"] or "-"
        typer.echo(
            f"{entry['updated']}  {entry['version']}  (was {was})  {entry['actor']}: {entry['reason']}"
            + _started_by(entry)
        )


def _started_by(entry: dict[str, Any]) -> str:
    """`  [webhook via fashion-pipeline up, event drop-1, run retrain-drop-1]` for a change a run made."""
    started = entry.get("trigger")
    if not isinstance(started, dict):
        return ""
    parts = [f"{started.get('by')} via {started.get('via')}"]
    payload = started.get("payload")
    if isinstance(payload, dict) and payload.get("event_id"):
        parts.append(f"event {payload['event_id']}")
    if entry.get("workflow"):
        parts.append(f"run {entry['workflow']}")
    return f"  [{', '.join(parts)}]"


def _user() -> str:
    return os.environ.get("USER") or os.environ.get("LOGNAME") or "unknown"


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors become one line on stderr and a non-zero exit."""
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="fashion-pipeline", standalone_mode=False)
    except typer.Abort:
        print("fashion-pipeline: aborted", file=sys.stderr)
        return 130
    except typer.TyperException as exc:  # usage errors (typer vendors click's exceptions)
        if type(exc).__name__ == "NoArgsIsHelpError":
            print(exc.format_message())
        else:
            message = " ".join(exc.format_message().split())
            print(f"fashion-pipeline: {message}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 2))
    except UserError as exc:
        print(f"fashion-pipeline: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fashion-pipeline: interrupted", file=sys.stderr)
        return 130
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
