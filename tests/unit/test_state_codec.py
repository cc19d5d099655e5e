"""clusterai.core.state_codec: checkpoint states as bytes, arrays included, never pickle."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pytest

from clusterai.core.state_codec import decode, encode
from clusterai.errors import BadInput

UNPICKLED: list[str] = []


def _tripwire() -> str:
    UNPICKLED.append("code ran")
    return "tripped"


class Tripwire:
    """Unpickling this runs code: what a checkpoint found in a shared bucket must never do."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return _tripwire, ()


def packed(**members: Any) -> bytes:
    """Bytes in the codec's packed layout, built by hand (np.savez pickles object arrays)."""
    out = io.BytesIO()
    np.savez(out, **members)
    return b"P" + out.getvalue()


def skeleton(state: Any) -> np.ndarray:
    return np.frombuffer(json.dumps(state).encode(), dtype=np.uint8)


def assert_same(a: Any, b: Any) -> None:
    """Equal, arrays compared by dtype, shape and values."""
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray)
        assert (b.dtype, b.shape) == (a.dtype, a.shape)
        np.testing.assert_array_equal(b, a)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(b) == list(a)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, list):
        assert isinstance(b, list) and len(b) == len(a)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert type(b) is type(a) and b == a


# -- round trips --------------------------------------------------------------------------------


def test_nested_json_with_arrays_round_trips():
    state = {
        "epoch": 3, "accuracy": 0.9625, "name": "run", "done": False, "note": None,
        "coef": np.arange(12, dtype=np.float64).reshape(3, 4) / 7,
        "layers": [
            {"w": np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3), "b": np.zeros(3, dtype=np.float32)},
            {"w": np.ones((3, 1, 2), dtype=np.float16), "b": np.array([], dtype=np.float64)},
        ],
        "counts": np.array([0, 2**40, -7], dtype=np.int64),
        "mask": np.array([[True, False]]),
        "pixels": np.arange(256, dtype=np.uint8),
        "small": np.array([-3, 4], dtype=np.int8),
        "phase": np.array([1 + 2j, -0.5j], dtype=np.complex128),
        "scalar_array": np.array(2.5),
        "deep": {"a": {"b": {"c": [1, [2, [np.array([9], dtype=np.uint32)]]]}}},
    }
    assert_same(state, decode(encode(state)))


def test_array_layouts_are_kept_by_value():
    base = np.arange(24, dtype=np.float64).reshape(4, 6)
    state = {"strided": base[:, ::2], "fortran": np.asfortranarray(base), "transposed": base.T}
    out = decode(encode(state))
    for name, array in state.items():
        np.testing.assert_array_equal(out[name], array)
        assert out[name].shape == array.shape


def test_tuples_come_back_as_lists_and_numpy_scalars_as_zero_d_arrays():
    out = decode(encode({"pair": (1, "a"), "step": np.int64(7), "flag": np.bool_(True), "lr": np.float64(0.5)}))
    assert out["pair"] == [1, "a"]
    assert isinstance(out["step"], np.ndarray) and out["step"].shape == () and out["step"].dtype == np.int64
    assert out["step"] == 7 and out["flag"].dtype == np.bool_
    assert out["lr"] == 0.5 and type(out["lr"]) is float  # np.float64 is a float: stored as JSON


@pytest.mark.parametrize("state", [b"", b"\x00\x01 raw \xff", b"PK\x03\x04 looks like a zip", b"R"])
def test_raw_bytes_round_trip_unchanged(state):
    assert decode(encode(state)) == state


def test_bytearray_and_memoryview_are_raw_bytes():
    assert decode(encode(bytearray(b"abc"))) == b"abc"
    assert decode(encode(memoryview(b"xyz"))) == b"xyz"


def test_torch_tensors_are_stored_as_numpy():
    torch = pytest.importorskip("torch")
    weight = torch.randn(3, 4, requires_grad=True)
    state = {"net": {"0.weight": weight, "steps": torch.tensor(5, dtype=torch.int64)},
             "half": torch.ones(2, dtype=torch.float16)}
    out = decode(encode(state))
    assert out["net"]["0.weight"].dtype == np.float32 and out["net"]["0.weight"].shape == (3, 4)
    np.testing.assert_array_equal(out["net"]["0.weight"], weight.detach().numpy())
    assert out["net"]["steps"].dtype == np.int64 and out["net"]["steps"] == 5
    assert out["half"].dtype == np.float16
    # loads back into torch as it was
    assert torch.equal(torch.as_tensor(out["net"]["0.weight"]), weight.detach())


def test_a_tensor_numpy_cannot_hold_is_refused_naming_it():
    torch = pytest.importorskip("torch")
    try:
        out = decode(encode({"w": torch.ones(2, dtype=torch.bfloat16)}))
    except BadInput as exc:
        assert "state.w" in str(exc)
    else:
        assert out["w"].tolist() == [1.0, 1.0]


# -- what cannot be stored ----------------------------------------------------------------------


@pytest.mark.parametrize(("state", "where"), [
    ({"a": {"b": [1, object()]}}, r"state\.a\.b\[1\] is a object"),
    ({"nan": float("nan")}, r"state\.nan is nan; store finite numbers"),
    ([1.0, float("-inf")], r"state\[1\] is -inf"),
    ({"ids": {1, 2}}, r"state\.ids is a set"),
    ({"blob": b"bytes inside a state"}, r"state\.blob is a bytes"),
    ({"arr": np.array([1, "x", None], dtype=object)}, r"state\.arr is a ndarray"),
    ({"m": {1: "one"}}, r"state\.m has a key 1 that is not a string"),
    ({1: "top"}, r"state has a key 1"),
    (object(), r"checkpoint: state is a object"),
])
def test_what_cannot_be_stored_is_named(state, where):
    with pytest.raises(BadInput, match=where):
        encode(state)


def test_a_dict_that_looks_like_an_array_marker_round_trips_or_is_refused():
    state = {"k": {"__clusterai_array__": "a0"}}
    try:
        data = encode(state)
    except BadInput:
        return
    assert decode(data) == state


# -- what is not a checkpoint -------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"x", b"{}", b"P", b"PZZZZ", b"\x80\x04pickle"])
def test_unknown_bytes_are_refused(data):
    with pytest.raises(BadInput, match="not a clusterai checkpoint"):
        decode(data)


@pytest.mark.parametrize("cut", ["garbage", "truncated"])
def test_a_damaged_archive_is_refused(cut):
    data = b"PPK\x03\x04 not really a zip" if cut == "garbage" else encode({"a": np.arange(100)})[:60]
    with pytest.raises(BadInput, match="damaged checkpoint"):
        decode(data)


def test_an_archive_without_its_state_is_refused():
    with pytest.raises(BadInput, match="damaged checkpoint"):
        decode(packed(a0=np.arange(3)))


def test_a_state_naming_a_missing_array_is_refused():
    with pytest.raises(BadInput, match="damaged checkpoint: array 'a7' is missing"):
        decode(packed(**{"state.json": skeleton({"w": {"__clusterai_array__": "a7"}})}))


def test_a_state_member_that_is_not_json_is_refused():
    with pytest.raises(BadInput, match="damaged checkpoint"):
        decode(packed(**{"state.json": np.frombuffer(b"{not json", dtype=np.uint8)}))


def test_decoding_never_unpickles():
    UNPICKLED.clear()
    evil = np.empty(1, dtype=object)
    evil[0] = Tripwire()
    data = packed(**{"state.json": skeleton({"w": {"__clusterai_array__": "a0"}}), "a0": evil})
    with pytest.raises(BadInput, match="damaged checkpoint: .*allow_pickle"):
        decode(data)
    assert UNPICKLED == []
    # the same bytes with pickle allowed would have run the code: the tripwire is armed
    with np.load(io.BytesIO(data[1:]), allow_pickle=True) as archive:
        assert archive["a0"][0] == "tripped"
    assert UNPICKLED == ["code ran"]
