"""The V1/V2 codec: what a client encodes the server decodes, and a bad body is refused in words."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from steps.serving import protocol
from steps.serving.protocol import CODECS, BadRequest, BadResponse, Protocol

V1, V2 = CODECS[Protocol.V1], CODECS[Protocol.V2]


def wire(body: Any) -> Any:
    """A body as it crosses HTTP: JSON text and back."""
    return json.loads(json.dumps(body))


def images(n: int) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 256, (n, 28, 28)).astype(np.float32)


def as_kserve_inputs(body: dict[str, Any]) -> list[SimpleNamespace]:
    """V2 input tensors as KServe hands them to the model: objects with a shape and flat data."""
    return [SimpleNamespace(**tensor) for tensor in body["inputs"]]


def test_v1_request_round_trip() -> None:
    sent = images(3)
    body = wire(V1.request(sent))
    assert list(body) == ["instances"]
    np.testing.assert_array_equal(V1.images(body), sent)


def test_v1_request_also_takes_flat_and_named_images() -> None:
    sent = images(2)
    sent[0, 0, :2] = 0, 255  # the whole pixel range
    flat = V1.images({"instances": sent.reshape(2, 784).tolist()})
    named = V1.images({"instances": [{"image": image.tolist()} for image in sent]})
    np.testing.assert_array_equal(flat, sent)
    np.testing.assert_array_equal(named, sent)
    assert flat.dtype == np.float32


def test_v2_request_round_trip() -> None:
    sent = images(4)
    body = wire(V2.request(sent))
    (tensor,) = body["inputs"]
    assert body["id"] and tensor["name"] == "image" and tensor["datatype"] == "FP32"
    assert tensor["shape"] == [4, 28, 28] and len(tensor["data"]) == 4 * 784
    np.testing.assert_array_equal(V2.images(as_kserve_inputs(body)), sent)


def test_v1_response_round_trip_takes_the_version_from_the_header() -> None:
    probabilities = np.random.default_rng(0).dirichlet(np.ones(10), 3).astype(np.float32)
    class_ids = probabilities.argmax(axis=1).astype(np.int64)
    body = wire(V1.respond(probabilities, class_ids))
    assert set(body["predictions"][0]) == {"probabilities", "class_id"}
    answer = V1.answer(body, {protocol.VERSION_HEADER: "v-7"})
    np.testing.assert_allclose(answer.probabilities, probabilities, rtol=1e-6)
    np.testing.assert_array_equal(answer.class_ids, class_ids)
    assert answer.version == "v-7"
    assert V1.answer(body, {}).version is None  # TF Serving names no version


def test_v2_response_round_trip_as_kserve_encodes_the_outputs() -> None:
    probabilities = np.random.default_rng(1).dirichlet(np.ones(10), 2).astype(np.float32)
    class_ids = probabilities.argmax(axis=1).astype(np.int64)
    outputs = V2.respond(probabilities, class_ids)
    assert [(t.name, t.shape, t.datatype) for t in outputs] == [
        ("probabilities", [2, 10], "FP32"),
        ("class_id", [2], "INT64"),
    ]
    body = wire(
        {
            "model_name": "fashion-mnist",
            "model_version": "v-body",
            "id": "req-1",
            "outputs": [
                {"name": t.name, "shape": t.shape, "datatype": t.datatype, "data": t.data.ravel().tolist()}
                for t in outputs
            ],
        }
    )
    answer = V2.answer(body, {})
    np.testing.assert_allclose(answer.probabilities, probabilities, rtol=1e-6)
    np.testing.assert_array_equal(answer.class_ids, class_ids)
    assert answer.version == "v-body"
    assert V2.answer(body, {protocol.VERSION_HEADER: "v-header"}).version == "v-header"


BAD_V1: dict[str, tuple[Any, str]] = {
    "not JSON": (b'{"instances": [', "not valid JSON"),
    "not an object": ([1, 2, 3], "must be a JSON object"),
    "wrong key": ({"images": []}, "unexpected key(s) 'images'"),
    "no key": ({}, 'missing "instances"'),
    "not a list": ({"instances": "cat"}, '"instances" must be a list'),
    "empty": ({"instances": []}, "the batch is empty"),
    "27x28": ({"instances": [[[0] * 28] * 27]}, "images must be [N,28,28] or [N,784], got [1, 27, 28]"),
    "783 values": ({"instances": [[0] * 783]}, "got [1, 783]"),
    "ragged": ({"instances": [[0] * 784, [0] * 10]}, "not a regular array of numbers"),
    "strings": ({"instances": [["a"] * 784]}, "pixel values must be numbers"),
    "booleans": ({"instances": [[True] * 784]}, "pixel values must be numbers"),
    "other name": ({"instances": [{"pixels": [0] * 784}]}, 'each be {"image": [...]}'),
    "over 255": ({"instances": [[255.5] * 784]}, "must be in 0..255"),
    "negative": ({"instances": [[-1] * 784]}, "must be in 0..255"),
    "NaN": ({"instances": [[float("nan")] * 784]}, "must be finite"),
    "too many": (
        {"instances": np.zeros((protocol.MAX_BATCH + 1, 784)).tolist()},
        f"batch of {protocol.MAX_BATCH + 1} images is over the maximum of {protocol.MAX_BATCH}: split it",
    ),
}


@pytest.mark.parametrize("case", BAD_V1)
def test_a_bad_v1_body_is_refused_saying_what_is_wrong(case: str) -> None:
    body, message = BAD_V1[case]
    with pytest.raises(BadRequest) as refused:
        V1.images(body)
    assert message in str(refused.value)


def test_a_bad_v2_request_is_refused_saying_what_is_wrong() -> None:
    two = wire(V2.request(images(1)))
    two["inputs"] *= 2
    with pytest.raises(BadRequest, match="exactly one input tensor"):
        V2.images(as_kserve_inputs(two))
    short = wire(V2.request(images(2)))
    short["inputs"][0]["data"] = short["inputs"][0]["data"][:784]
    with pytest.raises(BadRequest, match=r"data holds 784 values but shape \[2, 28, 28\] needs 1568"):
        V2.images(as_kserve_inputs(short))


@pytest.mark.parametrize(
    ("protocol_name", "body"),
    [
        ("v1", {"error": "no"}),
        ("v1", {"predictions": [{"class_id": 1}]}),
        ("v1", {"predictions": [{"probabilities": [0.1] * 9, "class_id": 1}]}),
        ("v2", {"outputs": [{"name": "class_id", "data": [1]}]}),
        ("v2", ["not", "an", "object"]),
    ],
)
def test_an_answer_that_is_not_predictions_is_a_bad_response(protocol_name: str, body: Any) -> None:
    with pytest.raises(BadResponse, match=f"not a {protocol_name} prediction answer|probability rows"):
        protocol.codec(protocol_name).answer(body, {})


def test_error_bodies_carry_the_message_and_plain_text_passes_through() -> None:
    text = json.dumps(protocol.error_body("send smaller batches"))
    assert json.loads(text) == {"error": "send smaller batches"}
    assert protocol.error_message(text) == "send smaller batches"
    assert protocol.error_message("502 Bad Gateway") == "502 Bad Gateway"
    assert protocol.error_message('["a list"]') == '["a list"]'


def test_paths_and_header_names_are_the_ones_clients_and_kserve_use() -> None:
    assert V1.predict_path("fashion-mnist") == "/v1/models/fashion-mnist:predict"
    assert V2.predict_path("fashion-mnist") == "/v2/models/fashion-mnist/infer"
    assert protocol.ready_path("fashion-mnist") == "/v2/models/fashion-mnist/ready"
    assert (protocol.VERSION_HEADER, protocol.ROLE_HEADER, protocol.ROUTE_HEADER) == (
        "X-Model-Version",
        "X-Model-Role",
        "X-Model-Route",
    )
    assert protocol.PROTOCOLS == ("v1", "v2")


@pytest.mark.parametrize("codec", list(CODECS.values()), ids=[str(p) for p in CODECS])
def test_each_codec_round_trips_at_the_bytes_level(codec: protocol.Codec) -> None:
    """What a client puts on the wire the server side reads back, and its answer bytes decode to the same."""
    sent = images(3)
    on_wire = codec.to_bytes(sent)
    assert isinstance(on_wire, bytes)
    request = json.loads(on_wire)
    received = codec.images(as_kserve_inputs(request) if codec.protocol is Protocol.V2 else request)
    np.testing.assert_array_equal(received, sent)
    probabilities = np.random.default_rng(2).dirichlet(np.ones(10), 3).astype(np.float32)
    answered = codec.respond(probabilities, probabilities.argmax(axis=1))
    if codec.protocol is Protocol.V2:  # KServe encodes the tensors
        answered = {"outputs": [{"name": t.name, "data": t.data.ravel().tolist()} for t in answered]}
    answer = codec.from_bytes(json.dumps(answered).encode(), {protocol.VERSION_HEADER: "v-1"})
    np.testing.assert_allclose(answer.probabilities, probabilities, rtol=1e-6)
    assert answer.version == "v-1"
    with pytest.raises(BadResponse, match=f"not a {codec.protocol} prediction answer"):
        codec.from_bytes(b"<html>502</html>", {})


def test_an_unknown_protocol_names_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown protocol 'v3': choose one of v1, v2"):
        protocol.codec("v3")
