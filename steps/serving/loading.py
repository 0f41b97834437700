"""A served version: a SavedModel's serving function, loaded and warmed before it takes requests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from steps.model import load_serving_function
from steps.registry import Registry

# A request's answer: probabilities [N, 10] and class ids [N].
Prediction = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Loaded:
    version: str
    signature: Any  # the SavedModel's serving_default

    def predict(self, images: np.ndarray) -> Prediction:
        import tensorflow as tf

        out = self.signature(image=tf.constant(images))
        return out["probabilities"].numpy(), out["class_id"].numpy()


def _load_warm(version: str, model_dir: Any) -> Loaded:
    """Load and warm a SavedModel: the first calls trace and allocate, so requests never pay for them."""
    loaded = Loaded(version=version, signature=load_serving_function(model_dir))
    for batch in (1, 32):
        loaded.predict(np.zeros((batch, 28, 28), np.float32))
    return loaded


def load_version(registry: Registry, version: str) -> Loaded:
    return _load_warm(version, registry.local_model_dir(version))


def load_storage_uri(storage_uri: str) -> Loaded:
    """A fixed version from its root (what KServe's `storageUri` names): `<root>/1` is the SavedModel."""
    from steps.registry import root_version
    from steps.storage import open_store

    store = open_store(storage_uri)
    # A copy of the root (KServe's /mnt/models) no longer ends with the version id: its manifest names it.
    version = root_version(store) or storage_uri.rstrip("/").rsplit("/", 1)[-1]
    return _load_warm(version, store.local_dir("1"))
