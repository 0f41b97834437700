"""The wire protocols of the model server, encoded and decoded in one place.

Our server, the client, the probe and the local target all speak through this module; TF Serving on
KServe speaks V1 the same way, since our SavedModel's signature is what shapes its answers.

- V1 (TF Serving's JSON): `POST /v1/models/<name>:predict` with `{"instances": [image, ...]}`, each
  image 28x28, 784 values or `{"image": ...}`; answer `{"predictions": [{"probabilities": [...],
  "class_id": k}, ...]}`.
- V2 (the Open Inference Protocol): `POST /v2/models/<name>/infer` with one FP32 input tensor `image`
  [N,28,28]; answer the tensors `probabilities` FP32 [N,10] and `class_id` INT64 [N].
- Headers: every answer names the version that served it (`X-Model-Version`) and its role
  (`X-Model-Role`); a request may pin `canary` or `production` (`X-Model-Route`, like KServe's tag URLs).
- A refused request gets a 4xx with `{"error": "<what was wrong and what to do>"}`.
"""

from __future__ import annotations

import json
import math
import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar
from typing import Protocol as TypingProtocol

import numpy as np

VERSION_HEADER = "X-Model-Version"
ROLE_HEADER = "X-Model-Role"
ROUTE_HEADER = "X-Model-Route"
MAX_BATCH = 256  # images per request
MAX_BODY_BYTES = 8 * 1024 * 1024  # a full batch as JSON text is ~1.2 MB; over it, 413

_INSTANCES, _PREDICTIONS, _ERROR = "instances", "predictions", "error"
# The SavedModel signature's input and outputs: V1 names them in instances and predictions, V2 names its tensors so.
_IMAGE, _PROBABILITIES, _CLASS_ID = "image", "probabilities", "class_id"


class BadRequest(ValueError):
    """The request is wrong; the message says how."""


class BadResponse(ValueError):
    """The server's answer does not follow the protocol."""


@dataclass(frozen=True)
class Answer:
    """A decoded answer: one row per image sent."""

    probabilities: np.ndarray  # float64 [N,10]
    class_ids: np.ndarray  # int64 [N]
    version: str | None  # the version that served it, when the answer names it


@dataclass(frozen=True)
class Tensor:
    """A V2 tensor, as the server hands its outputs to KServe."""

    name: str
    shape: list[int]
    datatype: str
    data: np.ndarray


class InputTensor(TypingProtocol):
    """A V2 input tensor as KServe decodes it (its `InferInput`)."""

    @property
    def shape(self) -> Sequence[int]: ...

    @property
    def data(self) -> Any: ...


def ready_path(model: str) -> str:
    """The model's own readiness (`/v2/health/ready` is the whole server's)."""
    return f"/v2/models/{model}/ready"


class Protocol(StrEnum):
    V1 = "v1"  # TF Serving's JSON
    V2 = "v2"  # the Open Inference Protocol, JSON


class Codec(ABC):
    """One wire protocol, both ends: what a client sends and reads, what the server reads and answers.

    The client side works at the bytes level (`to_bytes`, `from_bytes`), so a binary protocol is one more
    codec; the server side takes what KServe has decoded (a dict for V1, its InferInputs for V2) and
    returns what KServe encodes.
    """

    protocol: ClassVar[Protocol]
    content_type: ClassVar[str] = "application/json"

    @abstractmethod
    def predict_path(self, model: str) -> str:
        """The path a prediction request is POSTed to."""

    @abstractmethod
    def request(self, images: np.ndarray) -> Any:
        """The request for float32 [N,28,28] raw pixels, before serialisation."""

    @abstractmethod
    def answer(self, body: Any, headers: Mapping[str, str]) -> Answer:
        """A deserialised answer's predictions and the version that served it."""

    @abstractmethod
    def images(self, request: Any) -> np.ndarray:
        """Server side: the request KServe decoded -> float32 [N,28,28], or BadRequest saying what was wrong."""

    @abstractmethod
    def respond(self, probabilities: np.ndarray, class_ids: np.ndarray) -> Any:
        """Server side: the predictions in the form KServe encodes for this protocol."""

    def to_bytes(self, images: np.ndarray) -> bytes:
        return json.dumps(self.request(images)).encode()

    def from_bytes(self, data: bytes, headers: Mapping[str, str]) -> Answer:
        try:
            body = json.loads(data)
        except ValueError as exc:
            raise BadResponse(f"not a {self.protocol} prediction answer (not JSON: {exc})") from exc
        return self.answer(body, headers)

    def _answer(self, probabilities: Any, class_ids: Any, version: str | None) -> Answer:
        answer = Answer(
            np.asarray(probabilities, np.float64).reshape(-1, 10), np.asarray(class_ids, np.int64).reshape(-1), version
        )
        if len(answer.probabilities) != len(answer.class_ids):
            raise BadResponse(f"{len(answer.probabilities)} probability rows for {len(answer.class_ids)} class ids")
        return answer


class V1(Codec):
    """`{"instances": [image, ...]}` -> `{"predictions": [{"probabilities": [...], "class_id": k}, ...]}`."""

    protocol = Protocol.V1

    def predict_path(self, model: str) -> str:
        return f"/v1/models/{model}:predict"

    def request(self, images: np.ndarray) -> dict[str, Any]:
        return {_INSTANCES: images.tolist()}

    def answer(self, body: Any, headers: Mapping[str, str]) -> Answer:
        try:
            predictions = body[_PREDICTIONS]
            probabilities = [p[_PROBABILITIES] for p in predictions]
            return self._answer(probabilities, [p[_CLASS_ID] for p in predictions], headers.get(VERSION_HEADER))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BadResponse(f"not a v1 prediction answer ({type(exc).__name__}: {exc})") from exc

    def images(self, request: Any) -> np.ndarray:
        """Each instance is 28x28, 784 values or {"image": ...}."""
        if isinstance(request, bytes | str):
            raise BadRequest("the body is not valid JSON")
        if not isinstance(request, dict):
            raise BadRequest('the body must be a JSON object {"instances": [...]}')
        if set(request) != {_INSTANCES}:
            unexpected = ", ".join(map(repr, sorted(set(request) - {_INSTANCES})))
            raise BadRequest(
                f'unexpected key(s) {unexpected}: send {{"instances": [...]}}' if unexpected else 'missing "instances"'
            )
        instances = request[_INSTANCES]
        if not isinstance(instances, list):
            raise BadRequest('"instances" must be a list of images')
        if isinstance(instances[0] if instances else None, dict):
            if not all(isinstance(i, dict) and set(i) == {_IMAGE} for i in instances):
                raise BadRequest('named instances must each be {"image": [...]}')
            instances = [i[_IMAGE] for i in instances]
        return _images(instances)

    def respond(self, probabilities: np.ndarray, class_ids: np.ndarray) -> dict[str, Any]:
        rows = zip(probabilities, class_ids, strict=True)
        return {_PREDICTIONS: [{_PROBABILITIES: p.tolist(), _CLASS_ID: int(c)} for p, c in rows]}


class V2(Codec):
    """One FP32 input tensor `image` [N,28,28] -> the tensors `probabilities` FP32 [N,10], `class_id` INT64 [N]."""

    protocol = Protocol.V2

    def predict_path(self, model: str) -> str:
        return f"/v2/models/{model}/infer"

    def request(self, images: np.ndarray) -> dict[str, Any]:
        tensor = {"name": _IMAGE, "shape": list(images.shape), "datatype": "FP32", "data": images.ravel().tolist()}
        return {"id": str(uuid.uuid4()), "inputs": [tensor]}

    def answer(self, body: Any, headers: Mapping[str, str]) -> Answer:
        """The version from the header, else the body's `model_version`."""
        try:
            outputs = {o["name"]: o for o in body["outputs"]}
            version = headers.get(VERSION_HEADER) or body.get("model_version")
            return self._answer(outputs[_PROBABILITIES]["data"], outputs[_CLASS_ID]["data"], version)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BadResponse(f"not a v2 prediction answer ({type(exc).__name__}: {exc})") from exc

    def images(self, request: Sequence[InputTensor]) -> np.ndarray:
        """Exactly one tensor, its data flat as its shape says."""
        if len(request) != 1:
            raise BadRequest("send exactly one input tensor (the images)")
        return _images(request[0].data, list(request[0].shape))

    def respond(self, probabilities: np.ndarray, class_ids: np.ndarray) -> list[Tensor]:
        return [
            Tensor(_PROBABILITIES, list(probabilities.shape), "FP32", probabilities),
            Tensor(_CLASS_ID, list(class_ids.shape), "INT64", class_ids),
        ]


CODECS: dict[Protocol, Codec] = {codec.protocol: codec for codec in (V1(), V2())}
PROTOCOLS = tuple(str(protocol) for protocol in CODECS)


def codec(protocol: str) -> Codec:
    """The codec of a protocol's name; ValueError naming the choices for another."""
    try:
        return CODECS[Protocol(protocol)]
    except ValueError:
        raise ValueError(f"unknown protocol {protocol!r}: choose one of {', '.join(PROTOCOLS)}") from None


def error_body(message: str) -> dict[str, str]:
    """What a refused request gets back (KServe's own errors have the same form)."""
    return {_ERROR: message}


def error_message(text: str) -> str:
    """The message of an error answer, or its text when it has no error body."""
    try:
        body = json.loads(text)
    except ValueError:
        return text
    return str(body.get(_ERROR, text)) if isinstance(body, dict) else text


def _images(values: Any, shape: list[int] | None = None) -> np.ndarray:
    """Validate pixel data: [N,28,28] or [N,784], numbers in 0..255, 1 <= N <= MAX_BATCH."""
    try:
        array = np.asarray(values)
    except (ValueError, TypeError) as exc:
        raise BadRequest(f"instances are not a regular array of numbers ({exc})") from exc
    if array.dtype.kind not in "iuf":
        raise BadRequest("pixel values must be numbers")
    if shape is not None:
        if array.ndim != 1 or math.prod(shape) != array.size:
            raise BadRequest(f"data holds {array.size} values but shape {shape} needs {math.prod(shape)}")
        array = array.reshape(shape)
    if array.ndim >= 1 and len(array) == 0:
        raise BadRequest("the batch is empty: send at least one image")
    if array.ndim == 2 and array.shape[1] == 784:
        array = array.reshape(-1, 28, 28)
    if array.ndim != 3 or array.shape[1:] != (28, 28):
        raise BadRequest(f"images must be [N,28,28] or [N,784], got {list(array.shape)}")
    if len(array) > MAX_BATCH:
        raise BadRequest(f"batch of {len(array)} images is over the maximum of {MAX_BATCH}: split it")
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise BadRequest("pixel values must be finite (no NaN or infinity)")
    if array.min() < 0 or array.max() > 255:
        raise BadRequest("pixel values must be in 0..255 (raw pixels, as in the training data)")
    return array
