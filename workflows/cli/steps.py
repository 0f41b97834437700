"""The pipeline's steps (fetch, train, evaluate, gate, rollout, report), each run as its workflow container runs it.

Each writes its Argo output parameters as files into `--out` next to its reports, logs progress
on stderr, and prints a summary on stdout. The logic is in `steps/`; these only translate.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from steps import hardware
from steps.errors import UserError
from steps.parameters import Setting, build, settings
from steps.rollout import RolloutPolicy
from steps.targets import KINDS
from workflows.arguments import Argument, Value, argo_string, step_arguments
from workflows.cli.app import (
    EMBEDDED_TARGET,
    STATE,
    OutOption,
    YesNo,
    app,
    echo_summary,
    log,
    open_registry,
    open_store,
    workflow_name,
    write_outputs,
)
from workflows.spec import BY_COMMAND

PANEL = "Pipeline steps"
Command = Callable[..., None]


def _option(argument: Argument, default: Value) -> inspect.Parameter:
    """The command option of a workflow argument: its type, default, help and bounds; booleans as Argo passes them."""
    spec = argument.spec
    help_text = f"{spec.description}."
    if isinstance(default, bool):
        annotation: Any = Annotated[YesNo, typer.Option(help=help_text)]
        default = YesNo(argo_string(default))
    else:
        option = typer.Option(
            help=help_text,
            min=None if spec.exclusive_minimum else spec.minimum,
            max=spec.maximum,
            metavar=f"[{'|'.join(spec.choices)}]" if spec.choices else None,
        )
        annotation = Annotated[type(default), option]
    return inspect.Parameter(
        argument.input_name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
    )


def _setting_option(name: str, default: Any, setting: Setting) -> inspect.Parameter:
    """The command option of a dataclass's setting (steps/parameters.py): no workflow argument, only this option."""
    kind: Any = str if default is None else type(default)
    option = typer.Option(help=setting.help, envvar=setting.envvar)
    annotation = Annotated[kind | None, option] if default is None else Annotated[kind, option]
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def _argument_options(step: str, *settings_of: type, **defaults: Value) -> Callable[[Command], Command]:
    """Give a command one option per workflow argument `step` takes (workflows/arguments.py), and per setting.

    Typer reads the command's signature: an argument the command declares (by its input name) keeps its
    place and takes the table's type, default, help and bounds; the others, its dataclass's parameters,
    are added before the command's keyword-only options and reach it as keyword arguments. So are the
    settings the dataclasses `settings_of` declare (steps/parameters.py `setting`). `defaults` are the
    command's own where they differ from the workflow's, by argument name.
    """
    arguments = step_arguments(step)
    flags = {argument.input_name for argument in arguments if isinstance(argument.default, bool)}
    declared_settings = {name: spec for cls in settings_of for name, spec in settings(cls).items()}

    def decorate(command: Command) -> Command:
        signature = inspect.signature(command, eval_str=True)
        options = {a.input_name: _option(a, defaults.get(a.name, a.default)) for a in arguments}
        for name, (default, setting) in declared_settings.items():
            if name in options:
                raise TypeError(f"{name} is both a workflow argument and a setting of {command.__name__}")
            options[name] = _setting_option(name, default, setting)
        declared = [
            p.replace(annotation=options[p.name].annotation, default=options.pop(p.name).default)
            if p.name in options
            else p
            for p in signature.parameters.values()
            if p.kind is not p.VAR_KEYWORD
        ]
        if options and len(declared) == len(signature.parameters):
            raise TypeError(f"{command.__name__} takes no keyword arguments for {', '.join(options)}")
        at = next((i for i, p in enumerate(declared) if p.kind is p.KEYWORD_ONLY), len(declared))

        @functools.wraps(command)
        def run(**values: Any) -> None:
            command(**{name: value == YesNo.yes if name in flags else value for name, value in values.items()})

        run.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[*declared[:at], *options.values(), *declared[at:]]
        )
        return run

    return decorate


def step_command(command: str, *settings_of: type, **defaults: Value) -> Callable[[Command], Command]:
    """Register the command of a step, derived from its spec (workflows/spec.py): `fashion-pipeline COMMAND`.

    Its workflow arguments and the settings of `settings_of` become options (`_argument_options`), and
    `--out` defaults to outputs/COMMAND. It must take every option its template passes (its upstream
    inputs and extra args) and `out` if the step has outputs: a command that lacks one fails here, at
    import, not as a failed node on a cluster.
    """
    step = BY_COMMAND[command]
    add_options = _argument_options(command, *settings_of, **defaults)

    def decorate(function: Command) -> Command:
        own = inspect.signature(function, eval_str=True)
        function.__signature__ = own.replace(  # type: ignore[attr-defined]
            parameters=[
                p.replace(default=Path("outputs") / command) if p.name == "out" else p for p in own.parameters.values()
            ]
        )
        run = add_options(function)
        parameters = inspect.signature(run).parameters
        missing = [f"--{flag}" for flag in step.flags() if flag.replace("-", "_") not in parameters]
        if step.outputs and "out" not in parameters:
            missing.append("--out")
        if missing:
            raise TypeError(f"{function.__name__} lacks options its template passes: {', '.join(missing)}")
        return app.command(command, rich_help_panel=PANEL)(run)

    return decorate


def _started() -> dict[str, Any]:
    """How this run started, for the audit fields of the records (see workflows/trigger.py)."""
    from workflows import trigger

    return trigger.read(os.environ.get(trigger.ENV))


@step_command("fetch")
def fetch(data_url: str, out: OutOption) -> None:
    """Fetch Fashion-MNIST from the first valid mirror into the store (once per digest)."""
    from steps.dataset import fetch_dataset, mirror_chain
    from steps.lineage import lineage_record, write_lineage
    from workflows import trigger

    mirrors = mirror_chain(data_url or None, os.environ.get("FASHION_MNIST_MIRROR"))
    store = open_store()
    result = fetch_dataset(store, mirrors)
    started = _started() if os.environ.get(trigger.ENV) else {"by": "cli", "via": "fetch"}
    lineage = lineage_record(result, data_url or None, workflow_name(), started)
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
    write_outputs("fetch", out, values)
    drop = lineage["drop"] or {}
    echo_summary(
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

    uri = canonical_dataset_uri(open_store())
    if uri is None:
        raise UserError(f"no dataset in {STATE.store_uri}: run `fashion-pipeline fetch` first or pass --dataset")
    return uri


DatasetOption = Annotated[
    str, typer.Option(help="Dataset URI written by fetch (default: the canonical dataset in the store).")
]


@step_command("train")
def train(
    dataset: DatasetOption = "",
    *,
    threads: Annotated[
        int,
        typer.Option(
            envvar=hardware.CPU_LIMIT_ENV,
            help="TensorFlow threads (0 = one per host core); in a pod, its limits.cpu through the downward API.",
        ),
    ] = 0,
    out: OutOption,
    **values: Any,
) -> None:
    """Train the CNN, export a SavedModel and publish it as a new registry version."""
    from steps.registry import code_version
    from steps.train import TrainParams
    from steps.train import train as run_train

    params = TrainParams(**values)
    params.check()
    result = run_train(
        _default_dataset(dataset),
        open_registry(),
        params,
        out,
        code_version(),
        workflow_name(),
        _fit_progress(),
        threads,
    )
    fit = result.fit
    values = {"model_version": result.version, "model_uri": result.version_uri, "training": json.dumps(fit)}
    write_outputs("train", out, values)
    final = {k: v[-1] for k, v in result.history.items() if v}
    budget = f"{fit['budget_s']:g} s budget, " if fit["budget_s"] else ""
    echo_summary(
        {
            "model_version": result.version,
            "model_uri": result.version_uri,
            "model": f"{fit['architecture']}, {fit['precision']}, CPU tier {fit['cpu_tier']}",
            "fit": f"{budget}{fit['steps']} steps = {fit['epochs']:.2f} epochs in {fit['fit_s']:.1f} s",
            "speed": f"{fit['images_per_s']:.0f} images/s, {fit['gflops']:.1f} GFLOPS",
            "train_time": f"{result.train_s:.1f} s",
            **{k: f"{v:.4f}" for k, v in final.items()},
        }
    )


def _fit_progress() -> Any:
    """Steps as progress `k/N` (N as calibrated), with the epoch and the latest validation accuracy."""
    from steps.train import Progress
    from workflows.node_watch import PROGRESS_ENV, write_progress

    path = os.environ.get(PROGRESS_ENV)
    if not path:
        return None

    def report(progress: Progress) -> None:
        accuracy = progress.metrics.get("val_accuracy")
        status = f"epoch {progress.epoch:.1f}/{progress.epochs:.1f}" + (
            f", val accuracy {accuracy:.4f}" if accuracy is not None else ""
        )
        try:
            write_progress(path, progress.step, progress.total_steps, status)
        except OSError as exc:  # progress is for watchers: training goes on without it
            log.debug("cannot write progress to %s: %s", path, exc)

    return report


@step_command("evaluate")
def evaluate(
    dataset: DatasetOption = "",
    model: Annotated[str, typer.Option(help="Candidate: a version id, an alias, or 'latest'.")] = "latest",
    champion: Annotated[
        str, typer.Option(help="Champion: a version id or alias; 'none' to skip (default: production).")
    ] = "production",
    *,
    out: OutOption,
) -> None:
    """Evaluate the candidate and the champion on the test split; compare them with McNemar's test."""
    from steps.evaluate import evaluate as run_evaluate
    from steps.evaluate import resolve_champion

    registry = open_registry()
    candidate = registry.resolve(model)
    champion_version = resolve_champion(registry, champion)
    evaluation = run_evaluate(_default_dataset(dataset), registry, candidate, champion_version, out)
    metrics = evaluation.metrics
    values = {
        "metrics_uri": evaluation.record_uri,
        "accuracy": str(metrics["candidate"]["accuracy"]),
        "champion_version": champion_version or "",
        "champion_accuracy": str(metrics["champion"]["accuracy"]) if metrics["champion"] else "",
        "p_value": str(metrics["comparison"]["p_value"]) if metrics["comparison"] else "",
    }
    write_outputs("evaluate", out, values)
    echo_summary({"candidate": candidate, **values, "report": out / "metrics.json"})


@step_command("gate")
def gate(
    metrics: Annotated[
        str, typer.Option(help="evaluate's metrics: a metrics.json path, or its record's URI in the store.")
    ] = "outputs/evaluate/metrics.json",
    *,
    force: Annotated[bool, typer.Option(help="Promote whatever the checks say (needs --force-reason).")] = False,
    force_reason: str = "",
    out: OutOption,
    **values: Any,
) -> None:
    """Apply the promotion policy to evaluate's metrics and write the decision record."""
    from steps.gate import GatePolicy, read_metrics
    from steps.gate import gate as run_gate

    policy = GatePolicy(**values, force=force, force_reason=force_reason)
    started = _started()
    audit = {"workflow": workflow_name(), "trigger": started}
    record = run_gate(open_registry(), read_metrics(metrics), policy, out, audit)
    write_outputs("gate", out, {"decision": record["decision"], "model_version": record["candidate"] or ""})
    echo_summary(
        {"decision": record["decision"], "reasons": "; ".join(record["reasons"]), "record": out / "decision.json"}
    )


@step_command(
    "rollout",
    RolloutPolicy,
    *(kind.options for kind in KINDS.values()),
    rollout_target=EMBEDDED_TARGET,
    reason="rollout",
)
def rollout(
    model: Annotated[str, typer.Option(help="The version to roll out: a version id, an alias, or 'latest'.")],
    dataset: DatasetOption = "",
    *,
    target: str,
    reason: str,
    out: OutOption,
    **values: Any,
) -> None:
    """Roll a version out: preflight, canary, probe, then promote or roll back automatically."""
    from steps.rollout import rollout as run_rollout
    from steps.targets import make_target

    registry = open_registry()
    policy = build(RolloutPolicy, values)
    policy.check()
    chosen = make_target(target, registry, values, policy.ready_timeout_s)
    audit = {"workflow": workflow_name(), "trigger": _started()}
    try:
        record = run_rollout(
            registry, registry.resolve(model), _default_dataset(dataset), chosen, policy, reason, out, audit
        )
    finally:
        written = out / "rollout.json"
        if written.exists():
            outcome = json.loads(written.read_text())
            write_outputs(
                "rollout", out, {"outcome": outcome["outcome"], "served_version": outcome.get("served_version") or ""}
            )
    echo_summary({"outcome": record["outcome"], "version": record["version"], "target": record["target"]})


@step_command("report")
def report(
    workflow: Annotated[str, typer.Option(help="The workflow run to summarise.")],
    status: Annotated[str, typer.Option(help="The run's status ({{workflow.status}}).")] = "Unknown",
    failures: Annotated[str, typer.Option(help="Argo's {{workflow.failures}} JSON.")] = "",
    *,
    out: OutOption,
) -> None:
    """The exit report of a run: what it trained, what the gate decided, what is in production."""
    from steps.report import run_summary

    summary = run_summary(open_registry(), workflow, status, failures)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text(summary)
    typer.echo(summary, nl=False)
