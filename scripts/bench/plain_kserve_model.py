#!/usr/bin/env python3
"""The baseline any KServe user writes first: a plain `kserve.Model` around the SavedModel.

Synchronous `predict`, the nested JSON turned into an array, one signature call per request.
Used by scripts/bench/serving.py; binds 127.0.0.1 like our server.

    plain_kserve_model.py VERSION_ROOT PORT
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

version_root, port = sys.argv[1], int(sys.argv[2])
sys.argv = sys.argv[:1]  # `import kserve` parses the command line

import kserve  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from kserve.model_repository import ModelRepository  # noqa: E402
from kserve.protocol.dataplane import DataPlane  # noqa: E402
from kserve.protocol.model_repository_extension import ModelRepositoryExtension  # noqa: E402
from kserve.protocol.rest.server import RESTServer  # noqa: E402


class PlainModel(kserve.Model):
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path
        self.infer: Any = None

    def load(self) -> bool:
        self.infer = tf.saved_model.load(self.path).signatures["serving_default"]
        self.ready = True
        return self.ready

    def predict(self, payload: dict, headers: dict | None = None) -> dict:
        images = tf.constant(np.array(payload["instances"], dtype=np.float32))
        out = self.infer(image=images)
        return {
            "predictions": [
                {"probabilities": p.tolist(), "class_id": int(c)}
                for p, c in zip(out["probabilities"].numpy(), out["class_id"].numpy(), strict=True)
            ]
        }


model = PlainModel("fashion-mnist", f"{version_root}/1")
model.load()
repository = ModelRepository()
repository.update(model)
server = RESTServer(
    "kserve.model_server:app",
    DataPlane(model_registry=repository),
    ModelRepositoryExtension(model_registry=repository),
    http_port=port,
)
server.config.host = "127.0.0.1"
asyncio.run(server.start())
