"""The Keras CNNs and the SavedModel export in TF Serving layout.

Serving signature `serving_default` (the contract of every model in the registry):
input `image` float32 [N,28,28] raw pixels 0..255 (the model normalises);
outputs `probabilities` float32 [N,10] and `class_id` int64 [N].
TensorFlow is imported inside functions so that importing this module stays cheap.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from steps.errors import UserError

ARCHITECTURES = {
    "fast-cnn": "conv 32@28 > pool > conv 64@14 > pool > conv 128@7 > dense 128",
    "wide-cnn": "conv 32,32@28 > pool > conv 64,64@14 > pool > dense 256",
    "wide-bn-cnn": "wide-cnn with batch normalisation after each convolution",
    "mid-cnn": "conv 32@28 > pool > conv 64,64@14 > pool > dense 256",
    "small-cnn": "conv 32@26 > pool > conv 64@11 > pool (the Keras mnist_convnet shape)",
    "small-bn-cnn": "conv 32@26 > pool > norm > conv 64@11 > pool > norm > dense 128",
}
DEFAULT_DROPOUT = 0.3
# Batch normalisation is TensorFlow's fused kernel (fused_batch_norm below): Keras 3's BatchNormalization
# runs unfused on TF (moments, then normalise), which made the wide CNN 2.7x slower (1,001 vs 2,728
# images/s, bfloat16, AVX-512 BF16); the fused kernel costs 4%.
AUTO = "auto"  # chosen by CPU tier and budget (steps/train.py, resolve_recipe)
PIXEL_MEAN, PIXEL_STD = 72.94, 0.3530 * 255  # of the canonical train split


def build_model(architecture: str, dtype_policy: str = "float32", dropout: float = DEFAULT_DROPOUT) -> Any:
    """An uncompiled Keras model mapping raw [N,28,28] pixels to class probabilities."""
    import keras
    from keras import layers

    if architecture not in ARCHITECTURES:
        raise UserError(f"unknown architecture {architecture!r}: choose one of {', '.join(ARCHITECTURES)}")
    policy = keras.DTypePolicy(dtype_policy)
    normalised = architecture == "wide-bn-cnn"

    def conv(x: Any, filters: int, padding: str = "same") -> Any:
        if not normalised:
            return layers.Conv2D(filters, 3, padding=padding, activation="relu", dtype=policy)(x)
        x = layers.Conv2D(filters, 3, padding=padding, use_bias=False, dtype=policy)(x)
        return layers.ReLU(dtype=policy)(fused_batch_norm(policy)(x))

    def pool(x: Any) -> Any:
        return layers.MaxPooling2D(dtype=policy)(x)

    def dense(x: Any, units: int) -> Any:
        x = layers.Dropout(dropout, dtype=policy)(layers.Flatten(dtype=policy)(x))
        return layers.Dense(units, activation="relu", dtype=policy)(x)

    inputs = keras.Input((28, 28), name="image")
    x = layers.Reshape((28, 28, 1))(inputs)
    x = layers.Normalization(mean=PIXEL_MEAN, variance=PIXEL_STD**2, dtype=policy)(x)
    if architecture == "fast-cnn":
        x = dense(conv(pool(conv(pool(conv(x, 32)), 64)), 128), 128)
    elif architecture in ("wide-cnn", "wide-bn-cnn"):
        x = dense(pool(conv(conv(pool(conv(conv(x, 32), 32)), 64), 64)), 256)
    elif architecture == "mid-cnn":
        x = dense(pool(conv(conv(pool(conv(x, 32)), 64), 64)), 256)
    elif architecture == "small-bn-cnn":  # normalised after pooling: a quarter of the values to normalise
        x = fused_batch_norm(policy)(pool(conv(x, 32, "valid")))
        x = dense(fused_batch_norm(policy)(pool(conv(x, 64, "valid"))), 128)
    else:
        x = layers.Flatten(dtype=policy)(pool(conv(pool(conv(x, 32, "valid")), 64, "valid")))
    x = layers.Dropout(dropout, dtype=policy)(x)
    outputs = layers.Dense(10, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=architecture.replace("-", "_"))


def fused_batch_norm(dtype: Any) -> Any:
    """A batch-normalisation layer on TensorFlow's fused kernel (FusedBatchNormV3, which TF Serving runs too).

    In training it normalises by the batch's moments and moves the running ones; in inference it uses
    the running ones. Its variables stay float32 under mixed precision, as the kernel wants.
    """
    return _fused_batch_norm_layer()(dtype=dtype)


@functools.cache
def _fused_batch_norm_layer() -> type:
    """The layer class, defined once Keras is imported (importing this module stays cheap)."""
    import keras
    import tensorflow as tf

    class FusedBatchNorm(keras.layers.Layer):  # type: ignore[misc]
        momentum, epsilon = 0.9, 1e-3

        def build(self, input_shape: Any) -> None:
            channels = (input_shape[-1],)

            def weight(name: str, init: str, trainable: bool = True) -> Any:
                return self.add_weight(shape=channels, initializer=init, name=name, trainable=trainable, autocast=False)

            self.gamma, self.beta = weight("gamma", "ones"), weight("beta", "zeros")
            self.moving_mean = weight("moving_mean", "zeros", trainable=False)
            self.moving_variance = weight("moving_variance", "ones", trainable=False)
            # A counter kept float32: under mixed precision an autocast read would be bfloat16.
            self.updates = self.add_weight(
                shape=(), initializer="zeros", name="updates", trainable=False, autocast=False
            )

        def call(self, x: Any, training: bool = False) -> Any:
            empty = tf.constant([], tf.float32)
            if not training:
                mean, variance = self.moving_mean.value, self.moving_variance.value
            else:
                mean, variance = empty, empty
            y, batch_mean, batch_variance, *_ = tf.raw_ops.FusedBatchNormV3(
                x=x,
                scale=self.gamma.value,
                offset=self.beta.value,
                mean=mean,
                variance=variance,
                epsilon=self.epsilon,
                is_training=bool(training),
            )
            if training:
                # The plain average of the batches so far until the momentum weighs more: a model
                # trained for a few steps (a quick run) then serves with its batches' statistics,
                # not with the initial zeros and ones (AVX2, 22 steps: 76.3% instead of 48.6%).
                new = tf.maximum(1.0 - self.momentum, 1.0 / (self.updates.value + 1.0))
                self.moving_mean.assign(self.moving_mean * (1.0 - new) + batch_mean * new)
                self.moving_variance.assign(self.moving_variance * (1.0 - new) + batch_variance * new)
                self.updates.assign_add(1.0)
            return y

    return FusedBatchNorm


def training_flops_per_image(model: Any) -> float:
    """Floating-point operations one training image costs: the forward pass's convolutions and dense layers, x3.

    The backward pass costs about twice the forward (gradients of the inputs and of the weights).
    """
    import numpy as np
    from keras import layers

    forward = 0.0
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            _, height, width, _ = layer.output.shape
            forward += 2.0 * height * width * float(np.prod(layer.kernel.shape))
        elif isinstance(layer, layers.Dense):
            forward += 2.0 * float(np.prod(layer.kernel.shape))
    return 3.0 * forward


def export_saved_model(model: Any, architecture: str, path: Path, mirror_average: bool = False) -> Path:
    """Write `model` as a float32 SavedModel with the serving signature under `path` (TF Serving's `1/`).

    With `mirror_average` the signature averages the probabilities of each image and of its mirror
    image (test-time augmentation), inside the graph: what is evaluated is what is served.
    """
    import keras
    import tensorflow as tf

    # Training may run in bfloat16; serving gets float32 weights in a float32 graph.
    serving_model = build_model(architecture, "float32")
    serving_model.set_weights(model.get_weights())

    def serve(image: Any) -> dict[str, Any]:
        if mirror_average:  # one call on both views: at one image per request, half the per-op overhead of two
            both = serving_model(tf.concat([image, tf.reverse(image, [2])], 0), training=False)
            plain, mirrored = tf.split(both, 2)
            probabilities = (plain + mirrored) / 2
        else:
            probabilities = serving_model(image, training=False)
        return {"probabilities": probabilities, "class_id": tf.argmax(probabilities, axis=1, output_type=tf.int64)}

    archive = keras.export.ExportArchive()
    archive.track(serving_model)
    archive.add_endpoint(
        name="serving_default",
        fn=serve,
        input_signature=[tf.TensorSpec([None, 28, 28], tf.float32, name="image")],
    )
    archive.write_out(str(path), verbose=False)
    return path


def load_serving_function(model_dir: Path) -> Any:
    """The `serving_default` concrete function of a SavedModel directory."""
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(model_dir))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load SavedModel at {model_dir}: {exc}") from exc
    if "serving_default" not in loaded.signatures:
        raise UserError(f"SavedModel at {model_dir} has no serving_default signature")
    fn = loaded.signatures["serving_default"]
    fn._keep_alive = loaded  # the signature does not hold its variables' owner
    return fn
