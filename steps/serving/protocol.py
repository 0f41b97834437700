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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

PROTOCOLS = ("v1", "v2")
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


class InputTensor(Protocol):
    """A V2 input tensor as KServe decodes it (its `InferInput`)."""

    @property
    def shape(self) -> Sequence[int]: ...

    @property
    def data(self) -> Any: ...


def predict_path(model: str, protocol: str = "v1") -> str:
    """The path a prediction request is POSTed to."""
    return f"/v1/models/{model}:predict" if protocol == "v1" else f"/v2/models/{model}/infer"


def ready_path(model: str) -> str:
    """The model's own readiness (`/v2/health/ready` is the whole server's)."""
    return f"/v2/models/{model}/ready"


def encode_request(protocol: str, images: np.ndarray) -> dict[str, Any]:
    """The body of a request for float32 [N,28,28] raw pixels."""
    if protocol == "v1":
        return {_INSTANCES: images.tolist()}
    return {
        "id": str(uuid.uuid4()),
        "inputs": [{"name": _IMAGE, "shape": list(images.shape), "datatype": "FP32", "data": images.ravel().tolist()}],
    }


def decode_response(protocol: str, body: Any, headers: Mapping[str, str]) -> Answer:
    """An answer's predictions and version (from the header; a V2 body names it too)."""
    try:
        if protocol == "v1":
            predictions = body[_PREDICTIONS]
            probabilities = [p[_PROBABILITIES] for p in predictions]
            class_ids = [p[_CLASS_ID] for p in predictions]
            version = None
        else:
            outputs = {o["name"]: o for o in body["outputs"]}
            probabilities, class_ids = outputs[_PROBABILITIES]["data"], outputs[_CLASS_ID]["data"]
            version = body.get("model_version")
        answer = Answer(
            np.asarray(probabilities, np.float64).reshape(-1, 10),
            np.asarray(class_ids, np.int64).reshape(-1),
            headers.get(VERSION_HEADER) or version,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BadResponse(f"not a {protocol} prediction answer ({type(exc).__name__}: {exc})") from exc
    if len(answer.probabilities) != len(answer.class_ids):
        raise BadResponse(f"{len(answer.probabilities)} probability rows for {len(answer.class_ids)} class ids")
    return answer


def decode_v1_request(body: Any) -> np.ndarray:
    """V1 `{"instances": [...]}` → float32 [N,28,28]; each instance is 28x28, 784 values or {"image": ...}."""
    if isinstance(body, bytes | str):
        raise BadRequest("the body is not valid JSON")
    if not isinstance(body, dict):
        raise BadRequest('the body must be a JSON object {"instances": [...]}')
    if set(body) != {_INSTANCES}:
        unexpected = ", ".join(map(repr, sorted(set(body) - {_INSTANCES})))
        raise BadRequest(
            f'unexpected key(s) {unexpected}: send {{"instances": [...]}}' if unexpected else 'missing "instances"'
        )
    instances = body[_INSTANCES]
    if not isinstance(instances, list):
        raise BadRequest('"instances" must be a list of images')
    if isinstance(instances[0] if instances else None, dict):
        if not all(isinstance(i, dict) and set(i) == {_IMAGE} for i in instances):
            raise BadRequest('named instances must each be {"image": [...]}')
        instances = [i[_IMAGE] for i in instances]
    return _images(instances)


def decode_v2_inputs(inputs: Sequence[InputTensor]) -> np.ndarray:
    """A V2 request's input tensors → float32 [N,28,28]; exactly one tensor, its data flat as its shape says."""
    if len(inputs) != 1:
        raise BadRequest("send exactly one input tensor (the images)")
    return _images(inputs[0].data, list(inputs[0].shape))


def encode_v1_response(probabilities: np.ndarray, class_ids: np.ndarray) -> dict[str, Any]:
    return {
        _PREDICTIONS: [
            {_PROBABILITIES: p.tolist(), _CLASS_ID: int(c)} for p, c in zip(probabilities, class_ids, strict=True)
        ]
    }


def v2_outputs(probabilities: np.ndarray, class_ids: np.ndarray) -> list[Tensor]:
    return [
        Tensor(_PROBABILITIES, list(probabilities.shape), "FP32", probabilities),
        Tensor(_CLASS_ID, list(class_ids.shape), "INT64", class_ids),
    ]


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
