"""The `fashion-mnist` model as KServe serves it: a `kserve.Model` that owns its lifecycle.

KServe calls the hooks in this order: `load` (the versions are loaded and warmed; `ready` says whether
there is one to serve), `start` once the server has it (the inference thread and the alias watcher
begin), then per request `preprocess` (decode) → `predict` → `postprocess` (encode), and `stop` when
the model is unloaded. `stopping` is ours: readiness goes false as the server begins to stop, as a
pod's does, while requests in flight are still answered.

Import this module only in the server process: `import kserve` parses `sys.argv`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import kserve
import numpy as np
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from steps.monitoring import InferenceLog
from steps.registry import MODEL_NAME
from steps.serving import protocol
from steps.serving.batcher import Batcher
from steps.serving.router import AliasWatcher, Router

_V1, _V2 = protocol.CODECS[protocol.Protocol.V1], protocol.CODECS[protocol.Protocol.V2]


@dataclass(frozen=True)
class Decoded:
    """A request as `preprocess` hands it on: its protocol, its V2 id and its images."""

    protocol: protocol.Protocol
    request_id: str | None
    images: np.ndarray


@dataclass(frozen=True)
class Inferred:
    """`predict`'s result, for `postprocess` to encode."""

    request: Decoded
    version: str
    probabilities: np.ndarray
    class_ids: np.ndarray


class FashionModel(kserve.Model):  # type: ignore[misc]
    """Serves the router's versions; with a watcher they follow the registry's aliases, without they are fixed."""

    def __init__(
        self,
        router: Router,
        watcher: AliasWatcher | None = None,
        poll_s: float = 2.0,
        inference_log: InferenceLog | None = None,
    ) -> None:
        super().__init__(MODEL_NAME, return_response_headers=True)
        self.router = router
        self.watcher = watcher
        self.poll_s = poll_s
        self.batcher = Batcher()
        self.inference_log = inference_log

    def load(self) -> bool:
        """Load and warm what the aliases name (a fixed version is loaded already)."""
        if self.watcher is not None:
            self.watcher.sync()
        self.ready = self.router.production is not None
        return bool(self.ready)

    def start(self) -> None:
        """Begin inferring and following the aliases: after `load`, before the first request."""
        self.batcher.start()
        if self.inference_log is not None:
            self.inference_log.start()
        if self.watcher is not None:
            self.watcher.start(self.poll_s)

    def stopping(self) -> None:
        """The server stops taking requests: readiness goes false first."""
        self.ready = False

    def stop(self) -> None:
        """Stop following the aliases, answer what is queued, end the inference thread."""
        self.ready = False
        if self.watcher is not None:
            self.watcher.stop()
        self.batcher.close()
        if self.inference_log is not None:
            self.inference_log.stop()

    async def preprocess(self, payload: Any, headers: dict[str, str] | None = None) -> Decoded:
        try:
            if isinstance(payload, InferRequest):
                return Decoded(_V2.protocol, payload.id, _V2.images(payload.inputs))
            return Decoded(_V1.protocol, None, _V1.images(payload))
        except protocol.BadRequest as exc:
            raise InvalidInput(str(exc)) from exc

    async def predict(
        self, request: Decoded, headers: dict[str, str] | None = None, response_headers: dict[str, str] | None = None
    ) -> Inferred:
        served, role = self.router.pick((headers or {}).get(protocol.ROUTE_HEADER.lower(), ""))
        probabilities, class_ids = await self.batcher.predict(served, request.images)
        if response_headers is not None:
            response_headers[protocol.VERSION_HEADER] = served.version
            response_headers[protocol.ROLE_HEADER] = role
        if self.inference_log is not None:  # a queue put: the answer never waits for the log
            self.inference_log.record(served.version, role, request.images, probabilities, class_ids)
        return Inferred(request, served.version, probabilities, class_ids)

    async def postprocess(
        self, result: Inferred, headers: dict[str, str] | None = None, response_headers: dict[str, str] | None = None
    ) -> Any:
        if result.request.protocol is _V1.protocol:
            return _V1.respond(result.probabilities, result.class_ids)
        tensors = _V2.respond(result.probabilities, result.class_ids)
        outputs = [InferOutput(t.name, t.shape, t.datatype, t.data) for t in tensors]
        return InferResponse(
            response_id=result.request.request_id or str(uuid.uuid4()),
            model_name=MODEL_NAME,
            model_version=result.version,
            infer_outputs=outputs,
        )
