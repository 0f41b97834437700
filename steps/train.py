"""train: fit the CNN on a stored dataset, export it, and publish it as a new registry version."""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steps import hardware
from steps.errors import UserError
from steps.model import ARCHITECTURES, AUTO, DEFAULT_DROPOUT, build_model, export_saved_model, training_flops_per_image
from steps.parameters import check as check_parameters
from steps.parameters import parameter
from steps.registry import Registry

if TYPE_CHECKING:  # numpy and the dataset load on use: the CLI reads TrainParams at start
    import numpy as np

log = logging.getLogger(__name__)
# auto: mixed_bfloat16 where the CPU runs it natively (AMX, AVX-512 BF16), float32 elsewhere.
PRECISIONS = ("auto", "float32", "mixed_bfloat16")
VALIDATION_FRACTION = 0.05
VALIDATION_BATCH = 1000
# The default budget: train + evaluate within 120 s on every tier (README, "Measured"); a nightly run
# takes a larger one (workflows/triggers/schedule.py).
DEFAULT_BUDGET_S = 100.0
MIN_BUDGET_S = 10.0  # tracing and calibration alone take a few seconds
MAX_BUDGET_S = 3000.0  # within the train template's activeDeadlineSeconds (3600)
CALIBRATION_STEPS = 10
WARMUP_FRACTION = 0.05
MAX_BUDGETED_EPOCHS = 1000  # a budgeted fit ends on its clock, long before
# `auto` by tier (bfloat16 native or not) for a short fit and for a long one (a budget of LONG_BUDGET_S or
# more, or LONG_EPOCHS or more): each the best measured there (README, "Measured").
LONG_BUDGET_S = 300.0
LONG_EPOCHS = 15
# (architecture, dropout, mirror, label smoothing): a short fit underfits and wants little dropout, a
# long one more. Mirroring (flipped training images, both views averaged in the served model) raised
# the wide CNN's accuracy at 90 s on AVX-512 BF16 from 93.11% to 93.29%; label smoothing 0.1 the mid
# CNN's at 100 s from 93.37% to 93.55%.
AUTO_BF16 = (("mid-cnn", 0.1, True, 0.1), ("wide-bn-cnn", 0.3, True, 0.0))
AUTO_FLOAT32 = (("small-bn-cnn", 0.1, True, 0.1), ("wide-bn-cnn", 0.3, True, 0.0))


@dataclass(frozen=True)
class Recipe:
    """What `auto` resolved to on this CPU for this budget: the model, its precision, and mirroring."""

    architecture: str
    precision: str
    mirror: bool  # flip half the training images; the served model averages each image and its mirror
    dropout: float
    label_smoothing: float
    tier: str


@dataclass(frozen=True)
class TrainParams:
    epochs: int = parameter(
        0, "Passes over the training split, exactly; 0 trains for train_budget_s instead", minimum=0, maximum=200
    )
    batch_size: int = parameter(128, "Images per training step", minimum=1, maximum=4096)
    learning_rate: float = parameter(
        0.003, "Peak learning rate (warm-up, then cosine decay)", minimum=0, maximum=1, exclusive_minimum=True
    )
    # numpy and Keras take seeds below 2^32.
    seed: int = parameter(42, "Random seed for the subset, shuffling and initialisation", minimum=0, maximum=2**32 - 1)
    architecture: str = parameter(
        AUTO,
        "CNN architecture (auto: the one measured best for this CPU tier and budget)",
        choices=(AUTO, *ARCHITECTURES),
    )
    train_limit: int = parameter(
        0, "Train on this many images (0 = the whole split); small values for quick runs", minimum=0
    )
    precision: str = parameter("auto", "Training precision (the exported model is float32)", choices=PRECISIONS)
    train_budget_s: float = parameter(
        DEFAULT_BUDGET_S,
        "Seconds of fitting when epochs is 0: the step is timed after tracing and the schedule fitted to them",
        minimum=MIN_BUDGET_S,
        maximum=MAX_BUDGET_S,
    )

    def check(self) -> None:
        check_parameters(self)

    @property
    def budgeted(self) -> bool:
        return self.epochs == 0


def resolve_precision(precision: str, tier: str | None = None) -> str:
    """The Keras dtype policy for `precision`; an explicit value always wins over `auto`."""
    if precision != "auto":
        return precision
    return "mixed_bfloat16" if (tier or hardware.cpu_tier()) in hardware.BF16_TIERS else "float32"


def resolve_recipe(params: TrainParams, tier: str | None = None) -> Recipe:
    """The architecture, precision and mirroring a run trains with: explicit values win over `auto`.

    Measured per tier at the default and the nightly budgets (scripts/bench/train.py, README "Measured").
    """
    tier = tier or hardware.cpu_tier()
    long_fit = params.train_budget_s >= LONG_BUDGET_S if params.budgeted else params.epochs >= LONG_EPOCHS
    table = AUTO_BF16 if tier in hardware.BF16_TIERS else AUTO_FLOAT32
    architecture, dropout, mirror, smoothing = table[int(long_fit)]
    if params.architecture != AUTO:  # the user's model, as it always trained
        architecture, dropout, mirror, smoothing = params.architecture, DEFAULT_DROPOUT, False, 0.0
    return Recipe(architecture, resolve_precision(params.precision, tier), mirror, dropout, smoothing, tier)


def configure_threads(threads: int) -> None:
    """Size TensorFlow's pools to the CPUs the container may use, before any op runs.

    TensorFlow counts the host's cores, not the pod's CPU limit: on a 16-core node a pod limited to 2
    CPUs would run 16 intra-op threads on 2 CPUs' worth of quota and be throttled.
    """
    if threads <= 0:
        return
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
    except RuntimeError:  # TensorFlow already ran in this process: its pools are fixed
        log.warning("TensorFlow is already initialised: keeping its thread pools (asked for %d threads)", threads)
        return
    log.info("TensorFlow thread pools: %d intra-op, %d inter-op", threads, min(2, threads))


@dataclass(frozen=True)
class Progress:
    """Where fitting is: steps done of the total (as calibrated when budgeted), and the latest metrics."""

    step: int
    total_steps: int
    steps_per_epoch: int
    metrics: dict[str, float]

    @property
    def epoch(self) -> float:
        return self.step / self.steps_per_epoch

    @property
    def epochs(self) -> float:
        return self.total_steps / self.steps_per_epoch


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True)
class TrainResult:
    version: str
    version_uri: str
    history: dict[str, list[float]]
    train_s: float
    fit: dict[str, Any]  # what fitting did: budget, steps, epochs, speed, precision, CPU tier (the card's `training`)


def train(
    dataset_uri: str,
    registry: Registry,
    params: TrainParams,
    out_dir: Path,
    code_version: str,
    workflow: str | None = None,
    on_progress: ProgressCallback | None = None,
    threads: int = 0,
) -> TrainResult:
    """Train, export and publish; writes history.json and training-curve.png into `out_dir`.

    `on_progress` is told when fitting has been calibrated and at each epoch's end.
    `threads` sizes TensorFlow's thread pools (0: TensorFlow's default, one thread per host core).
    """
    from steps.dataset import load_dataset

    params.check()
    recipe = resolve_recipe(params)
    problem = hardware.bfloat16_problem(recipe.tier) if recipe.precision == "mixed_bfloat16" else None
    if problem:
        raise UserError(
            f"precision {recipe.precision}: {problem}: train in float32 (precision auto or float32), or set "
            f"{hardware.ONEDNN_ENV}=0 for TensorFlow's own bfloat16, about 5x slower than float32 there"
        )
    dataset = load_dataset(dataset_uri)
    x, y = _subset(dataset.x_train, dataset.y_train, params.train_limit, params.seed)
    n_val = max(1, int(len(x) * VALIDATION_FRACTION)) if len(x) >= 20 else 0
    x_val, y_val, x_fit, y_fit = x[:n_val], y[:n_val], x[n_val:], y[n_val:]
    log.info(
        "training %s on %d images (%d held out for validation), %s, batch %d, lr %g, %s%s, CPU tier %s",
        recipe.architecture,
        len(x_fit),
        n_val,
        f"a budget of {params.train_budget_s:g} s" if params.budgeted else f"{params.epochs} epochs",
        params.batch_size,
        params.learning_rate,
        recipe.precision,
        (", mirror augmentation" if recipe.mirror else "")
        + (f", label smoothing {recipe.label_smoothing:g}" if recipe.label_smoothing else ""),
        recipe.tier,
    )

    started = time.perf_counter()
    model, history, clock = _fit(x_fit, y_fit, x_val, y_val, params, recipe, on_progress, threads)
    train_s = time.perf_counter() - started
    fit = _fit_record(params, recipe, clock, model, threads)
    log.info(
        "fitted %d steps (%.2f epochs) in %.1f s: %.1f ms a step, %d images/s, %.1f GFLOPS",
        fit["steps"],
        fit["epochs"],
        fit["fit_s"],
        fit["seconds_per_step"] * 1000,
        fit["images_per_s"],
        fit["gflops"],
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "history.json").write_text(json.dumps(history, indent=2) + "\n")
    plot_history(history, out_dir / "training-curve.png")
    with tempfile.TemporaryDirectory(prefix="saved-model-") as scratch:
        export_dir = export_saved_model(model, recipe.architecture, Path(scratch) / "1", mirror_average=recipe.mirror)
        card = {
            "params": asdict(params),
            "dataset": {"uri": dataset_uri, "digest": dataset.digest, "train_examples": len(x_fit)},
            "training": {**fit, "seconds": round(train_s, 2), "final": {k: v[-1] for k, v in history.items() if v}},
            "code_version": code_version,
            "workflow": workflow,
            "signature": {
                "inputs": {"image": "float32 [N,28,28] raw pixels 0..255"},
                "outputs": {"probabilities": "float32 [N,10]", "class_id": "int64 [N]"},
            },
        }
        version = registry.publish(export_dir, card)
    log.info("published model version %s (%.1f s of training)", version, train_s)
    return TrainResult(
        version=version,
        version_uri=registry.version_uri(version),
        history=history,
        train_s=train_s,
        fit=fit,
    )


def _fit_record(params: TrainParams, recipe: Recipe, clock: FitClock, model: Any, threads: int) -> dict[str, Any]:
    """What fitting did, for the model card and the run record."""
    images_per_s = clock.batch_size / clock.step_s if clock.step_s else 0.0
    return {
        "budget_s": params.train_budget_s if params.budgeted else None,
        "architecture": recipe.architecture,
        "precision": recipe.precision,
        "mirror": recipe.mirror,
        "dropout": recipe.dropout,
        "label_smoothing": recipe.label_smoothing,
        "cpu_tier": recipe.tier,
        "cpu_model": hardware.cpu_model(),
        "onednn": os.environ.get(hardware.ONEDNN_ENV, "TensorFlow's default"),
        "threads": threads or None,
        "batch_size": clock.batch_size,
        "steps": clock.steps,
        "calibrated_steps": clock.calibrated_total,
        "epochs": round(clock.steps / clock.steps_per_epoch, 3),
        "fit_s": round(clock.fit_s, 2),
        "seconds_per_step": round(clock.step_s, 5),
        "images_per_s": round(images_per_s, 1),
        "gflops": round(images_per_s * training_flops_per_image(model) / 1e9, 1),
    }


def _subset(x: np.ndarray, y: np.ndarray, limit: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A class-stratified-in-expectation random subset (all of it when `limit` is 0), shuffled."""
    import numpy as np

    order = np.random.default_rng(seed).permutation(len(x))
    if limit:
        order = order[:limit]
    return x[order], y[order]


def _fit(
    x: np.ndarray,
    y: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    params: TrainParams,
    recipe: Recipe,
    on_progress: ProgressCallback | None = None,
    threads: int = 0,
) -> tuple[Any, dict[str, list[float]], FitClock]:
    import keras
    import numpy as np
    import tensorflow as tf

    configure_threads(threads)
    keras.utils.set_random_seed(params.seed)
    model = build_model(recipe.architecture, recipe.precision, recipe.dropout)
    batch = min(params.batch_size, len(x))
    steps_per_epoch = max(1, len(x) // batch)
    total_steps = steps_per_epoch * max(1, params.epochs)
    schedule = fitted_cosine(params.learning_rate, total_steps)
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=recipe.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )
    images, labels = tf.constant(x), tf.one_hot(y.astype("int32"), 10)

    def gather(idx: Any) -> tuple[Any, Any]:
        batch_images = tf.cast(tf.gather(images, idx), tf.float32)
        if recipe.mirror:  # half the images left-right: the served model averages both views
            flip = tf.random.uniform([tf.shape(idx)[0], 1, 1]) < 0.5
            batch_images = tf.where(flip, tf.reverse(batch_images, [2]), batch_images)
        return batch_images, tf.gather(labels, idx)

    # Shuffle indices, not images: cheap per epoch, and the batches are gathered in one op. The input
    # repeats, so epochs follow each other without a restart, and a budgeted fit ends mid-epoch when
    # its clock says. tf.data's autotuning is off: its model of the pipeline grows with every batch and
    # took 13 s to free after a 30 s fit (56 s after 90 s, at the process's exit); two parallel gathers
    # and four batches ahead keep the same pace.
    train_ds = (
        tf.data.Dataset.range(len(x))
        .shuffle(len(x), seed=params.seed, reshuffle_each_iteration=True)
        .batch(batch, drop_remainder=True)
        .map(gather, num_parallel_calls=2)
        .prefetch(4)
        .repeat()
    )
    options = tf.data.Options()
    options.autotune.enabled = False
    if threads > 0:
        options.threading.private_threadpool_size = threads
    train_ds = train_ds.with_options(options)
    budget_s = params.train_budget_s if params.budgeted else None
    clock = FitClock(steps_per_epoch, batch, total_steps, budget_s, schedule.fit, on_progress)
    validation = (x_val.astype("float32"), np.eye(10, dtype="float32")[y_val]) if len(x_val) else None
    fitted = model.fit(
        train_ds,
        epochs=params.epochs or MAX_BUDGETED_EPOCHS,
        steps_per_epoch=steps_per_epoch,
        validation_data=validation,
        validation_batch_size=VALIDATION_BATCH,
        verbose=0,
        shuffle=False,  # the dataset reshuffles its indices every epoch
        callbacks=[clock.callback()],
    )
    history = {k: [round(float(v), 5) for v in vs] for k, vs in fitted.history.items()}
    return model, history, clock


def fitted_cosine(peak: float, total_steps: int) -> Any:
    """Warm-up to `peak`, then cosine decay to 1% of it at `total_steps`, a horizon FitClock may move."""
    import keras
    import tensorflow as tf

    class FittedCosine(keras.optimizers.schedules.LearningRateSchedule):  # type: ignore[misc]
        def __init__(self) -> None:
            self.total_steps = tf.Variable(float(total_steps), trainable=False, name="schedule_total_steps")
            self.warmup_steps = tf.Variable(max(1.0, WARMUP_FRACTION * total_steps), trainable=False)

        def __call__(self, step: Any) -> Any:
            step = tf.cast(step, tf.float32)
            warm = peak * (0.1 + 0.9 * tf.minimum(step / self.warmup_steps, 1.0))
            span = tf.maximum(self.total_steps - self.warmup_steps, 1.0)
            progress = tf.clip_by_value((step - self.warmup_steps) / span, 0.0, 1.0)
            cosine = peak * (0.01 + 0.99 * 0.5 * (1.0 + tf.cos(math.pi * progress)))
            return tf.where(step < self.warmup_steps, warm, cosine)

        def fit(self, total: float, warmup: bool = False) -> None:
            """Move the horizon to `total` steps; with `warmup`, size the warm-up from it too."""
            self.total_steps.assign(total)
            if warmup:
                self.warmup_steps.assign(max(1.0, WARMUP_FRACTION * total))

        def get_config(self) -> dict[str, Any]:
            return {"peak": peak, "total_steps": float(self.total_steps.numpy())}

    return FittedCosine()


class FitClock:
    """Times fitting, fits the schedule's horizon to the budget, and stops when the budget is spent.

    The first step traces the training function; the next CALIBRATION_STEPS are timed and give the
    horizon. At each epoch's end the horizon is fitted again to the seconds left, with what that epoch's
    steps and validation took. Without a budget (an explicit epoch count) it only times.
    """

    def __init__(
        self,
        steps_per_epoch: int,
        batch_size: int,
        total_steps: int,
        budget_s: float | None,
        on_horizon: Callable[[float, bool], None] | None = None,
        on_progress: ProgressCallback | None = None,
        now: Callable[[], float] = time.perf_counter,
    ) -> None:
        """`on_horizon(total_steps, warmup)` moves the schedule (see fitted_cosine); `now` is the clock."""
        self.steps_per_epoch = steps_per_epoch
        self.batch_size = batch_size
        self.budget_s = budget_s
        self.on_horizon = on_horizon
        self.on_progress = on_progress
        self.now = now
        self.steps = 0
        self.total_steps = total_steps
        self.started = self.traced = self.last_step = 0.0
        self.validation_s = 0.0  # the latest epoch's validation, kept back from the budget for the last one
        self.validating_s = 0.0  # all validation so far
        self.calibrated_step_s: float | None = None
        self.calibrated_total: int | None = None
        self.metrics: dict[str, float] = {}  # the latest epoch's
        self.fit_s = 0.0

    def callback(self) -> Any:
        import keras

        clock = self

        class Callback(keras.callbacks.Callback):  # type: ignore[misc]
            def on_train_begin(self, logs: Any = None) -> None:
                clock.begin()

            def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
                if clock.step_done():
                    self.model.stop_training = True

            def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
                if clock.epoch_done({k: float(v) for k, v in (logs or {}).items()}):
                    self.model.stop_training = True

            def on_train_end(self, logs: Any = None) -> None:
                clock.end()

        return Callback()

    def begin(self) -> None:
        self.started = self.now()
        if self.budget_s is None:  # the total is known: an explicit epoch count
            self._report({})

    def end(self) -> None:
        """Fitting is over: what ran is the total, whether the steps or the seconds ran out first."""
        self.fit_s = self.now() - self.started
        if self.budget_s is not None and self.steps != self.total_steps:
            self.total_steps = self.steps
            self._report(self.metrics)

    @property
    def step_s(self) -> float:
        """Seconds a training step takes, measured since tracing (validation apart)."""
        if self.steps <= 1:
            return 0.0
        return max(1e-6, (self.last_step - self.traced - self.validating_s) / (self.steps - 1))

    def elapsed(self, now: float) -> float:
        return now - self.started

    def step_done(self) -> bool:
        """After each step: calibrate once, and say whether the budget is spent."""
        now = self.last_step = self.now()
        self.steps += 1
        if self.steps == 1:
            self.traced = now
        if self.budget_s is None:
            return False
        if self.steps == 1 + CALIBRATION_STEPS:
            self.calibrated_step_s = self.step_s
            if self.elapsed(now) >= self.budget_s:
                raise UserError(
                    f"train_budget_s={self.budget_s:g} cannot fit the calibration: tracing and "
                    f"{CALIBRATION_STEPS} steps took {self.elapsed(now):.1f} s here; give more seconds or set epochs"
                )
            self._refit(now, warmup=True)
            self.calibrated_total = self.total_steps
            log.info(
                "calibrated: %.1f ms a step, %d steps (%.2f epochs) in the %g s budget",
                self.calibrated_step_s * 1000,
                self.total_steps,
                self.total_steps / self.steps_per_epoch,
                self.budget_s,
            )
            self._report({})
        spent = self.elapsed(now) + self.validation_s >= self.budget_s
        return spent or (self.calibrated_step_s is not None and self.steps >= self.total_steps)

    def epoch_done(self, metrics: dict[str, float]) -> bool:
        now = self.now()
        self.metrics = metrics
        self.validation_s = now - self.last_step
        self.validating_s += self.validation_s
        if self.budget_s is not None and self.calibrated_step_s is not None:
            self._refit(now)
        shown = " ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()) if k != "learning_rate")
        epochs = self.steps / self.steps_per_epoch, self.total_steps / self.steps_per_epoch
        log.info("epoch %.2f/%.2f: %s (%.1f s)", *epochs, shown, self.elapsed(now))
        self._report(metrics)
        return self.budget_s is not None and self.steps >= self.total_steps

    def _refit(self, now: float, warmup: bool = False) -> None:
        """The horizon the seconds left allow: steps at the measured pace, each epoch's validation, the last one's."""
        assert self.budget_s is not None
        left = self.budget_s - self.elapsed(now) - self.validation_s
        per_step = self.step_s + self.validation_s / self.steps_per_epoch
        self.total_steps = max(self.steps, self.steps + int(max(0.0, left) / per_step))
        if self.on_horizon is not None:
            self.on_horizon(float(self.total_steps), warmup)

    def _report(self, metrics: dict[str, float]) -> None:
        if self.on_progress is not None:
            self.on_progress(Progress(self.steps, max(self.steps, self.total_steps), self.steps_per_epoch, metrics))


def plot_history(history: dict[str, list[float]], path: Path) -> Path:
    """Loss and accuracy per epoch, training and validation, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for key, style in ((metric, "-o"), (f"val_{metric}", "--s")):
            if history.get(key):
                epochs = range(1, len(history[key]) + 1)
                ax.plot(epochs, history[key], style, label=key.replace("_", " "))
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
