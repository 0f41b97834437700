"""train: fit the CNN on a stored dataset, export it, and publish it as a new registry version."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steps.hardware import cpu_has_bf16
from steps.model import ARCHITECTURES, DEFAULT_ARCHITECTURE, build_model, export_saved_model
from steps.parameters import check as check_parameters
from steps.parameters import parameter
from steps.registry import Registry

if TYPE_CHECKING:  # numpy and the dataset load on use: the CLI reads TrainParams at start
    import numpy as np

log = logging.getLogger(__name__)
# auto: mixed_bfloat16 where the CPU runs it natively (AMX, AVX-512 BF16), float32 elsewhere.
PRECISIONS = ("auto", "float32", "mixed_bfloat16")
VALIDATION_FRACTION = 0.05
EpochCallback = Callable[[int, int, dict[str, float]], None]


@dataclass(frozen=True)
class TrainParams:
    epochs: int = parameter(8, "Passes over the training split", minimum=1, maximum=200)
    batch_size: int = parameter(128, "Images per training step", minimum=1, maximum=4096)
    learning_rate: float = parameter(
        0.003, "Peak learning rate (warm-up, then cosine decay)", minimum=0, maximum=1, exclusive_minimum=True
    )
    # numpy and Keras take seeds below 2^32.
    seed: int = parameter(42, "Random seed for the subset, shuffling and initialisation", minimum=0, maximum=2**32 - 1)
    architecture: str = parameter(DEFAULT_ARCHITECTURE, "CNN architecture", choices=ARCHITECTURES)
    train_limit: int = parameter(
        0, "Train on this many images (0 = the whole split); small values for quick runs", minimum=0
    )
    precision: str = parameter("auto", "Training precision (the exported model is float32)", choices=PRECISIONS)

    def check(self) -> None:
        check_parameters(self)


def resolve_precision(precision: str) -> str:
    """The Keras dtype policy for `precision`; an explicit value always wins over `auto`."""
    if precision != "auto":
        return precision
    return "mixed_bfloat16" if cpu_has_bf16() else "float32"


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
class TrainResult:
    version: str
    version_uri: str
    history: dict[str, list[float]]
    train_s: float


def train(
    dataset_uri: str,
    registry: Registry,
    params: TrainParams,
    out_dir: Path,
    code_version: str,
    workflow: str | None = None,
    on_epoch: EpochCallback | None = None,
    threads: int = 0,
) -> TrainResult:
    """Train, export and publish; writes history.json and training-curve.png into `out_dir`.

    `on_epoch(done, epochs, metrics)` is told 0 when fitting starts, then each finished epoch.
    `threads` sizes TensorFlow's thread pools (0: TensorFlow's default, one thread per host core).
    """
    from steps.dataset import load_dataset

    params.check()
    dataset = load_dataset(dataset_uri)
    x, y = _subset(dataset.x_train, dataset.y_train, params.train_limit, params.seed)
    n_val = max(1, int(len(x) * VALIDATION_FRACTION)) if len(x) >= 20 else 0
    x_val, y_val, x_fit, y_fit = x[:n_val], y[:n_val], x[n_val:], y[n_val:]
    log.info(
        "training %s on %d images (%d held out for validation), %d epochs, batch %d, lr %g, %s",
        params.architecture,
        len(x_fit),
        n_val,
        params.epochs,
        params.batch_size,
        params.learning_rate,
        resolve_precision(params.precision),
    )

    started = time.perf_counter()
    model, history = _fit(x_fit, y_fit, x_val, y_val, params, on_epoch, threads)
    train_s = time.perf_counter() - started

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "history.json").write_text(json.dumps(history, indent=2) + "\n")
    plot_history(history, out_dir / "training-curve.png")
    with tempfile.TemporaryDirectory(prefix="saved-model-") as scratch:
        export_dir = export_saved_model(model, params.architecture, Path(scratch) / "1")
        card = {
            "params": asdict(params),
            "dataset": {"uri": dataset_uri, "digest": dataset.digest, "train_examples": len(x_fit)},
            "training": {
                "precision": resolve_precision(params.precision),
                "threads": threads or None,
                "seconds": round(train_s, 2),
                "final": {k: v[-1] for k, v in history.items() if v},
            },
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
    )


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
    on_epoch: EpochCallback | None = None,
    threads: int = 0,
) -> tuple[Any, dict[str, list[float]]]:
    import keras
    import tensorflow as tf

    configure_threads(threads)
    keras.utils.set_random_seed(params.seed)
    model = build_model(params.architecture, resolve_precision(params.precision))
    steps_per_epoch = max(1, len(x) // params.batch_size)
    total = steps_per_epoch * params.epochs
    warmup = max(1, total // 10)
    schedule = keras.optimizers.schedules.CosineDecay(
        params.learning_rate / 10,
        max(1, total - warmup),  # one step per epoch leaves nothing after the warm-up
        alpha=0.01,
        warmup_target=params.learning_rate,
        warmup_steps=warmup,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    images, labels = tf.constant(x), tf.constant(y.astype("int32"))

    def gather(idx: Any) -> tuple[Any, Any]:
        return tf.cast(tf.gather(images, idx), tf.float32), tf.gather(labels, idx)

    # Shuffle indices, not images: cheap per epoch, and the batches are gathered in one op.
    train_ds = (
        tf.data.Dataset.range(len(x))
        .shuffle(len(x), seed=params.seed, reshuffle_each_iteration=True)
        .batch(params.batch_size, drop_remainder=len(x) >= params.batch_size)
        .map(gather, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
    if threads > 0:
        options = tf.data.Options()
        options.threading.private_threadpool_size = threads
        train_ds = train_ds.with_options(options)
    clock = _EpochClock(params.epochs, on_epoch)
    validation = (x_val.astype("float32"), y_val) if len(x_val) else None
    fitted = model.fit(
        train_ds,
        epochs=params.epochs,
        validation_data=validation,
        verbose=0,
        shuffle=False,  # the dataset reshuffles its indices every epoch
        callbacks=[keras.callbacks.LambdaCallback(on_epoch_begin=clock.start, on_epoch_end=clock.log)],
    )
    history = {k: [round(float(v), 5) for v in vs] for k, vs in fitted.history.items()}
    return model, history


class _EpochClock:
    """One log line per epoch with the metrics Keras computed and the epoch's wall time."""

    def __init__(self, epochs: int, on_epoch: EpochCallback | None = None) -> None:
        self.epochs = epochs
        self.on_epoch = on_epoch
        self._started = 0.0

    def start(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self._started = time.perf_counter()
        if epoch == 0 and self.on_epoch is not None:
            self.on_epoch(0, self.epochs, {})

    def log(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        metrics = " ".join(f"{k} {v:.4f}" for k, v in sorted((logs or {}).items()) if k != "learning_rate")
        log.info("epoch %d/%d: %s (%.1f s)", epoch + 1, self.epochs, metrics, time.perf_counter() - self._started)
        if self.on_epoch is not None:
            self.on_epoch(epoch + 1, self.epochs, {k: float(v) for k, v in (logs or {}).items()})


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
