"""The Keras CNNs and the SavedModel export in TF Serving layout.

Serving signature `serving_default` (the contract of every model in the registry):
input `image` float32 [N,28,28] raw pixels 0..255 (the model normalises);
outputs `probabilities` float32 [N,10] and `class_id` int64 [N].
TensorFlow is imported inside functions so that importing this module stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from steps.errors import UserError

ARCHITECTURES = {
    "fast-cnn": "conv 32@28 > pool > conv 64@14 > pool > conv 128@7 > dense 128",
    "wide-cnn": "conv 32,32@28 > pool > conv 64,64@14 > pool > dense 256",
    "small-cnn": "conv 32@26 > pool > conv 64@11 > pool (the Keras mnist_convnet shape)",
}
# No BatchNormalization: Keras 3 runs it unfused on TF, which costs more per step on CPU than
# the convolutions themselves (measured: 33 ms vs 9 ms per batch of 128 at 28x28x32).
AUTO = "auto"  # chosen by CPU tier and budget (steps/train.py, resolve_recipe)
PIXEL_MEAN, PIXEL_STD = 72.94, 0.3530 * 255  # of the canonical train split


def build_model(architecture: str, dtype_policy: str = "float32") -> Any:
    """An uncompiled Keras model mapping raw [N,28,28] pixels to class probabilities."""
    import keras
    from keras import layers

    if architecture not in ARCHITECTURES:
        raise UserError(f"unknown architecture {architecture!r}: choose one of {', '.join(ARCHITECTURES)}")
    policy = keras.DTypePolicy(dtype_policy)

    def conv(x: Any, filters: int, padding: str = "same") -> Any:
        return layers.Conv2D(filters, 3, padding=padding, activation="relu", dtype=policy)(x)

    def pool(x: Any) -> Any:
        return layers.MaxPooling2D(dtype=policy)(x)

    def dense(x: Any, units: int) -> Any:
        x = layers.Dropout(0.3, dtype=policy)(layers.Flatten(dtype=policy)(x))
        return layers.Dense(units, activation="relu", dtype=policy)(x)

    inputs = keras.Input((28, 28), name="image")
    x = layers.Reshape((28, 28, 1))(inputs)
    x = layers.Normalization(mean=PIXEL_MEAN, variance=PIXEL_STD**2, dtype=policy)(x)
    if architecture == "fast-cnn":
        x = dense(conv(pool(conv(pool(conv(x, 32)), 64)), 128), 128)
    elif architecture == "wide-cnn":
        x = dense(pool(conv(conv(pool(conv(conv(x, 32), 32)), 64), 64)), 256)
    else:
        x = layers.Flatten(dtype=policy)(pool(conv(pool(conv(x, 32, "valid")), 64, "valid")))
    x = layers.Dropout(0.3, dtype=policy)(x)
    outputs = layers.Dense(10, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=architecture.replace("-", "_"))


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
        probabilities = serving_model(image, training=False)
        if mirror_average:
            probabilities = (probabilities + serving_model(tf.reverse(image, [2]), training=False)) / 2
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
