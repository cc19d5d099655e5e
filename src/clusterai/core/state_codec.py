"""Checkpoint states as bytes, without pickle: a trial's state is JSON data with numpy arrays (or
anything with `__array__`, such as torch tensors, stored as numpy) at any depth.

The bytes are an `.npz` archive (numpy's own zip of `.npy` files) holding one JSON member, the
state with each array replaced by a marker, and one member per array. It is read back with
`allow_pickle=False`: a checkpoint found in a shared bucket can hold numbers, never code. A state
that is plain `bytes` is kept as it is, for tasks with a format of their own.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from typing import Any

from clusterai.errors import BadInput

_STATE = "state.json"
_MARK = "__clusterai_array__"
_MAGIC = b"PK"  # a zip archive; raw bytes states are told apart by a one-byte prefix
_RAW, _PACKED = b"R", b"P"


def encode(state: Any) -> bytes:
    """The bytes of a state; BadInput names the first value that cannot be stored."""
    if isinstance(state, (bytes, bytearray, memoryview)):
        return _RAW + bytes(state)
    import numpy as np

    arrays: dict[str, Any] = {}
    skeleton = _strip(state, arrays, "state")
    out = io.BytesIO()
    members = {_STATE: np.frombuffer(json.dumps(skeleton, allow_nan=False).encode(), dtype=np.uint8)}
    np.savez(out, **members, **arrays)  # type: ignore[arg-type]  # numpy's stub types the keywords as bool
    return _PACKED + out.getvalue()


def decode(data: bytes) -> Any:
    """The state `encode` made; BadInput when the bytes are not one."""
    if data[:1] == _RAW:
        return data[1:]
    if data[:1] != _PACKED or data[1:3] != _MAGIC:
        raise BadInput("not a clusterai checkpoint (unknown format)")
    import numpy as np

    try:
        with np.load(io.BytesIO(data[1:]), allow_pickle=False) as archive:
            skeleton = json.loads(archive[_STATE].tobytes())
            arrays = {name: archive[name] for name in archive.files if name != _STATE}
    except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise BadInput(f"damaged checkpoint: {exc}") from None
    return _fill(skeleton, arrays)


def _strip(value: Any, arrays: dict[str, Any], where: str) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise BadInput(f"checkpoint: {where} is {value}; store finite numbers (or put it in an array)")
        return value
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise BadInput(f"checkpoint: {where} has a key {key!r} that is not a string")
        if set(value) == {_MARK}:
            raise BadInput(f"checkpoint: {where} is an object with only the key {_MARK!r}, which marks an array "
                           "here; rename that key")
        return {key: _strip(item, arrays, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strip(item, arrays, f"{where}[{i}]") for i, item in enumerate(value)]
    array = _as_array(value)
    if array is None:
        raise BadInput(f"checkpoint: {where} is a {type(value).__name__}; a state holds JSON data and arrays "
                       "(numpy, torch tensors), or is bytes")
    name = f"a{len(arrays)}"
    arrays[name] = array
    return {_MARK: name}


def _as_array(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return np.asarray(value)
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            return None
        return value
    detach = getattr(value, "detach", None)  # a torch tensor: to host memory first
    if callable(detach):
        try:
            return detach().cpu().numpy()
        except TypeError:  # a dtype numpy has no equal for (bfloat16): kept as float32
            return detach().cpu().float().numpy()
    if hasattr(value, "__array__"):
        array = np.asarray(value)
        return None if array.dtype == object else array
    return None


def _fill(value: Any, arrays: dict[str, Any]) -> Any:
    if isinstance(value, dict):
        if set(value) == {_MARK}:
            try:
                return arrays[value[_MARK]]
            except KeyError:
                raise BadInput(f"damaged checkpoint: array {value[_MARK]!r} is missing") from None
        return {key: _fill(item, arrays) for key, item in value.items()}
    if isinstance(value, list):
        return [_fill(item, arrays) for item in value]
    return value
