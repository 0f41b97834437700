"""Run by the side environment's Python (TF of the pinned TF Serving): load an exported SavedModel and answer.

Usage: python tf_serving_loader.py SAVED_MODEL_DIR IMAGES.npy  -> JSON on stdout:
{"tensorflow": version, "session": {...}, "saved_model_load": {...}}, each with probabilities and class_id.

TF Serving's C++ loads a SavedModel with `LoadSavedModel` (a TF1 session over the MetaGraph tagged
`serve`) and runs the signature's tensors by name; `tf.compat.v1.saved_model.loader.load` is that
path in Python. `tf.saved_model.load` is the TF2 path. Kept free of project imports: it runs in a venv
that has only TensorFlow.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tensorflow as tf


def through_session(export_dir: str, images: np.ndarray) -> dict[str, list]:
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], export_dir)
        signature = meta_graph.signature_def["serving_default"]
        fetches = {name: info.name for name, info in signature.outputs.items()}
        feed = {signature.inputs["image"].name: images}
        answers = session.run(fetches, feed_dict=feed)
    return {name: value.tolist() for name, value in answers.items()}


def through_saved_model_load(export_dir: str, images: np.ndarray) -> dict[str, list]:
    serve = tf.saved_model.load(export_dir).signatures["serving_default"]
    return {name: value.numpy().tolist() for name, value in serve(image=tf.constant(images)).items()}


def main() -> None:
    export_dir, images_path = sys.argv[1:3]
    images = np.load(images_path).astype("float32")
    result = {
        "tensorflow": tf.__version__,
        "session": through_session(export_dir, images),
        "saved_model_load": through_saved_model_load(export_dir, images),
    }
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
