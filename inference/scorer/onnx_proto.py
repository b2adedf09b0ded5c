"""A minimal writer for the ONNX protobuf format.

The encoder graph is built here from the embedding package's own weights instead of being exported
through torch. Writing the few protobuf messages that ONNX needs takes a page of code, needs no
`onnx`, `torch` or `protobuf` package at run time, and is byte-for-byte deterministic: the same
weights always give the same model bytes.

Only the fields this project uses are written. Field numbers are those of `onnx.proto`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

# TensorProto.DataType values.
FLOAT = 1
UINT8 = 2
INT8 = 3
INT32 = 6
INT64 = 7

_NUMPY_TYPES: dict[np.dtype[np.generic], int] = {
    np.dtype(np.float32): FLOAT,
    np.dtype(np.uint8): UINT8,
    np.dtype(np.int8): INT8,
    np.dtype(np.int32): INT32,
    np.dtype(np.int64): INT64,
}

# AttributeProto.AttributeType values.
_ATTR_FLOAT = 1
_ATTR_INT = 2
_ATTR_STRING = 3
_ATTR_INTS = 7

# The IR version that opset 17 requires.
IR_VERSION = 8


def _varint(value: int) -> bytes:
    if value < 0:
        # Negative int64 values are written as their two's-complement 64-bit pattern.
        value += 1 << 64
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _key(number: int, wire_type: int) -> bytes:
    return _varint((number << 3) | wire_type)


def _int_field(number: int, value: int) -> bytes:
    return _key(number, 0) + _varint(value)


def _bytes_field(number: int, value: bytes) -> bytes:
    return _key(number, 2) + _varint(len(value)) + value


def _str_field(number: int, value: str) -> bytes:
    return _bytes_field(number, value.encode())


def _float_field(number: int, value: float) -> bytes:
    return _key(number, 5) + struct.pack("<f", value)


AttributeValue = int | float | str | Sequence[int]


def _attribute(name: str, value: AttributeValue) -> bytes:
    out = _str_field(1, name)
    # bool is an int subclass: keep it out of the float branch by testing int first.
    if isinstance(value, int):
        return out + _int_field(20, _ATTR_INT) + _int_field(3, value)
    if isinstance(value, float):
        return out + _int_field(20, _ATTR_FLOAT) + _float_field(2, value)
    if isinstance(value, str):
        return out + _int_field(20, _ATTR_STRING) + _bytes_field(4, value.encode())
    return out + _int_field(20, _ATTR_INTS) + b"".join(_int_field(8, v) for v in value)


def tensor(name: str, array: np.ndarray) -> bytes:
    """Serialise a numpy array as a TensorProto (little-endian raw data)."""
    data_type = _NUMPY_TYPES[array.dtype]
    dims = b"".join(_int_field(1, d) for d in array.shape)
    raw = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    return dims + _int_field(2, data_type) + _str_field(8, name) + _bytes_field(9, raw)


def value_info(name: str, elem_type: int, shape: Sequence[int | str]) -> bytes:
    """A graph input or output: a tensor type with fixed (int) or symbolic (str) dimensions."""
    dims = b"".join(
        _bytes_field(1, _int_field(1, d) if isinstance(d, int) else _str_field(2, d)) for d in shape
    )
    tensor_type = _int_field(1, elem_type) + _bytes_field(2, dims)
    return _str_field(1, name) + _bytes_field(2, _bytes_field(1, tensor_type))


@dataclass
class GraphBuilder:
    """Collects nodes and initialisers in order and serialises them as a ModelProto."""

    name: str
    nodes: list[bytes] = field(default_factory=list)
    initializers: list[bytes] = field(default_factory=list)
    _counter: int = 0

    def constant(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(tensor(name, array))
        return name

    def node(
        self,
        op_type: str,
        inputs: Iterable[str],
        outputs: int | Sequence[str] = 1,
        domain: str = "",
        **attributes: AttributeValue,
    ) -> list[str]:
        """Append a node; outputs get generated names unless given. Returns the output names."""
        self._counter += 1
        if isinstance(outputs, int):
            outputs = [f"{op_type.lower()}_{self._counter}_{i}" for i in range(outputs)]
        body = b"".join(_str_field(1, i) for i in inputs)
        body += b"".join(_str_field(2, o) for o in outputs)
        body += _str_field(3, f"{op_type}_{self._counter}") + _str_field(4, op_type)
        body += b"".join(_bytes_field(5, _attribute(k, v)) for k, v in sorted(attributes.items()))
        if domain:
            body += _str_field(7, domain)
        self.nodes.append(body)
        return list(outputs)

    def op(self, op_type: str, *inputs: str, domain: str = "", **attributes: AttributeValue) -> str:
        """Append a single-output node and return its output name."""
        return self.node(op_type, inputs, 1, domain, **attributes)[0]

    def model(
        self,
        inputs: Sequence[bytes],
        outputs: Sequence[bytes],
        opsets: dict[str, int],
        producer: str,
    ) -> bytes:
        graph = b"".join(_bytes_field(1, n) for n in self.nodes)
        graph += _str_field(2, self.name)
        graph += b"".join(_bytes_field(5, t) for t in self.initializers)
        graph += b"".join(_bytes_field(11, i) for i in inputs)
        graph += b"".join(_bytes_field(12, o) for o in outputs)
        out = _int_field(1, IR_VERSION) + _str_field(2, producer)
        out += _bytes_field(7, graph)
        for domain, version in sorted(opsets.items()):
            out += _bytes_field(8, _str_field(1, domain) + _int_field(2, version))
        return out
