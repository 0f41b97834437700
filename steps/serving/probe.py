"""Probing a served model over HTTP with holdout images (V1 protocol, as TF Serving speaks it)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from steps.serving.protocol import CODECS, Protocol

_V1 = CODECS[Protocol.V1]  # what TF Serving and our server both answer


@dataclass
class ProbeResult:
    requests: int
    errors: int
    correct: int
    images: int
    latencies_ms: list[float] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=dict)  # the version each answer named -> answers
    error_samples: list[str] = field(default_factory=list)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 1.0

    @property
    def accuracy(self) -> float:
        return self.correct / self.images if self.images else 0.0

    @property
    def p95_ms(self) -> float:
        import numpy as np

        return float(np.percentile(self.latencies_ms, 95)) if self.latencies_ms else float("inf")


def probe_over_http(
    predict_url: str,
    images: np.ndarray,
    labels: np.ndarray,
    batch: int = 32,
    headers: dict[str, str] | None = None,
    timeout_s: float = 10.0,
) -> ProbeResult:
    """POST the holdout in batches to a V1 `:predict` URL; errors are counted, never raised."""
    import requests

    result = ProbeResult(requests=0, errors=0, correct=0, images=0)
    session = requests.Session()
    for start in range(0, len(images), batch):
        chunk, truth = images[start : start + batch], labels[start : start + batch]
        result.requests += 1
        began = time.perf_counter()
        try:
            sent = {**(headers or {}), "Content-Type": _V1.content_type}
            response = session.post(predict_url, data=_V1.to_bytes(chunk), headers=sent, timeout=timeout_s)
            elapsed = (time.perf_counter() - began) * 1000
            if response.status_code != 200:
                raise ValueError(f"HTTP {response.status_code}: {response.text[:200]}")
            answer = _V1.from_bytes(response.content, response.headers)
            if answer.class_ids.shape != truth.shape:
                raise ValueError(f"{len(answer.class_ids)} predictions for {len(truth)} images")
        except (requests.RequestException, ValueError) as exc:
            result.errors += 1
            if len(result.error_samples) < 5:
                result.error_samples.append(str(exc))
            continue
        result.latencies_ms.append(elapsed)
        result.images += len(truth)
        result.correct += int(np.sum(answer.class_ids == truth))
        version = answer.version or "unknown"
        result.versions[version] = result.versions.get(version, 0) + 1
    return result
