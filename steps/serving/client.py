"""A client for the model server (ours, or KServe's TF Serving runtime), V1 and V2 protocols.

Images of any size are converted the way Fashion-MNIST was made: grayscale, the object
trimmed, its longest side scaled to 28 pixels and centred, light-on-dark.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from steps.dataset import CLASS_NAMES
from steps.errors import UserError
from steps.registry import MODEL_NAME
from steps.serving.protocol import Codec, codec, error_message


@dataclass(frozen=True)
class Prediction:
    class_id: int
    probabilities: list[float]
    version: str | None  # the version that served it, when the answer names one

    @property
    def class_name(self) -> str:
        return CLASS_NAMES[self.class_id]

    @property
    def probability(self) -> float:
        return self.probabilities[self.class_id]


class ClientError(UserError):
    """The server refused the request or could not be reached."""


class PredictionClient:
    def __init__(
        self,
        url: str,
        protocol: str = "v1",
        model: str = MODEL_NAME,
        timeout_s: float = 10.0,
        retries: int = 3,
        batch_size: int = 64,
        host_header: str | None = None,
    ) -> None:
        import requests

        try:
            self.codec: Codec = codec(protocol)
        except ValueError as exc:
            raise UserError(str(exc)) from exc
        if not url.startswith(("http://", "https://")):
            raise UserError(f"server URL {url!r} must start with http:// or https://")
        self.url = url.rstrip("/")
        self.protocol = protocol
        self.model = model
        self.timeout_s = timeout_s
        self.retries = retries
        self.batch_size = batch_size
        self.session = requests.Session()
        if host_header:
            self.session.headers["Host"] = host_header  # KServe behind an ingress routes by Host

    @property
    def endpoint(self) -> str:
        return self.url + self.codec.predict_path(self.model)

    def predict(self, images: np.ndarray) -> list[Prediction]:
        """Predictions for float32 [N,28,28] raw pixels, sent in batches of `batch_size`."""
        results: list[Prediction] = []
        for start in range(0, len(images), self.batch_size):
            results += self._predict_batch(np.asarray(images[start : start + self.batch_size], np.float32))
        return results

    def _post(self, body: bytes) -> Any:
        import requests

        delay = 0.2
        for attempt in range(self.retries + 1):
            try:
                headers = {"Content-Type": self.codec.content_type}
                return self.session.post(self.endpoint, data=body, headers=headers, timeout=self.timeout_s)
            except requests.ConnectionError as exc:  # refused or reset: the request never ran
                if attempt == self.retries:
                    raise ClientError(f"cannot reach {self.url} after {attempt + 1} attempts: {exc}") from exc
                time.sleep(delay)
                delay *= 2
            except requests.Timeout as exc:
                raise ClientError(f"{self.endpoint} did not answer within {self.timeout_s:g}s") from exc
        raise AssertionError("unreachable")

    def _predict_batch(self, batch: np.ndarray) -> list[Prediction]:
        response = self._post(self.codec.to_bytes(batch))
        if response.status_code != 200:
            detail = error_message(response.text)
            raise ClientError(f"{self.endpoint} answered {response.status_code}: {detail[:300]}")
        try:
            answer = self.codec.from_bytes(response.content, response.headers)
        except ValueError as exc:  # not the protocol's answer
            raise ClientError(f"{self.endpoint} did not answer with predictions: {exc}") from exc
        return [
            Prediction(int(c), p.tolist(), answer.version)
            for p, c in zip(answer.probabilities, answer.class_ids, strict=True)
        ]


def load_image(path: Path) -> np.ndarray:
    """A PNG/JPEG of any size as Fashion-MNIST-like float32 [28,28] raw pixels (light object, dark ground)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            gray = np.asarray(image.convert("L"), np.float32)
    except FileNotFoundError as exc:
        raise UserError(f"{path}: no such file") from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable PNG or JPEG image ({exc})") from exc
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if border.mean() > 127:  # a product photo on a light background: Fashion-MNIST is negated
        gray = 255 - gray
    if gray.shape == (28, 28):
        return gray
    return _fit_28(gray)


def _fit_28(gray: np.ndarray) -> np.ndarray:
    from PIL import Image

    mask = gray > 0.1 * max(float(gray.max()), 1.0)
    if mask.any():
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        gray = gray[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    height, width = gray.shape
    scale = 28 / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = np.asarray(Image.fromarray(gray.astype(np.uint8)).resize(size, Image.Resampling.LANCZOS), np.float32)
    canvas = np.zeros((28, 28), np.float32)
    top, left = (28 - size[1]) // 2, (28 - size[0]) // 2
    canvas[top : top + size[1], left : left + size[0]] = resized
    return canvas
