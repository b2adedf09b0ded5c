"""Build the MiniLM sentence encoder as an ONNX graph from the packaged safetensors weights.

The graph takes `input_ids` and `attention_mask` (int64, [batch, tokens]) and returns:
- `embedding` (float32, [batch, 384]): BERT encoder, mean pooling over the real tokens, L2
  normalisation, which is what sentence-transformers computes for all-MiniLM-L6-v2;
- `middle`: the same pooling of one intermediate layer's output (the third of six by default).
  The final layer is trained for topical similarity; the middle one keeps more of the form of a
  prompt, and the head predicts better with both (see docs/router.md).

Two variants:
- `fp32`: the weights as shipped.
- `int8`: every dense layer's weights quantised to int8 with one scale per output column, run with
  ORT's `DynamicQuantizeMatMul` (activations quantised per call). Embedding tables, LayerNorm and
  softmax stay in float32. About twice as fast on AVX2; the quality cost is measured in
  docs/router.md.

Building takes about a second and is deterministic, so the model is built in memory when the
scorer loads and never stored in the repository.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Literal

import numpy as np

from inference.scorer.onnx_proto import FLOAT, INT64, GraphBuilder, value_info

Precision = Literal["fp32", "int8"]

_SAFETENSORS_DTYPES = {"F32": np.float32, "I64": np.int64}

# Weights are quantised to 7 bits ([-63, 63]): AVX2 machines without VNNI multiply uint8 by int8
# pairwise into int16 lanes, which full-range int8 weights can saturate. On 225 prompts of the
# routing data the guard costs nothing measurable: cosine to fp32 0.993 (7 bits), 0.994 (8 bits).
_QMAX = 63.0


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Read a safetensors file (8-byte header length, JSON header, raw little-endian data)."""
    blob = path.read_bytes()
    (header_len,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + header_len])
    base = 8 + header_len
    tensors: dict[str, np.ndarray] = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES[spec["dtype"]]
        start, end = spec["data_offsets"]
        array = np.frombuffer(
            blob[base + start : base + end], dtype=np.dtype(dtype).newbyteorder("<")
        )
        tensors[name] = array.reshape(spec["shape"]).astype(dtype)
    return tensors


def quantize_columns(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-column int8 quantisation of a [in, out] matrix: returns (int8, scales)."""
    scale = np.abs(weight).max(axis=0) / _QMAX
    scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
    quantised = np.clip(np.rint(weight / scale), -_QMAX, _QMAX).astype(np.int8)
    return quantised, scale


class _Encoder:
    def __init__(
        self,
        weights: dict[str, np.ndarray],
        config: dict[str, float],
        precision: Precision,
        middle_layer: int,
    ):
        self.w = weights
        self.hidden = int(config["hidden_size"])
        self.heads = int(config["num_attention_heads"])
        self.layers = int(config["num_hidden_layers"])
        self.eps = float(config["layer_norm_eps"])
        self.precision = precision
        if not 0 <= middle_layer < self.layers:
            raise ValueError(f"middle_layer must be in [0, {self.layers}), not {middle_layer}")
        self.middle_layer = middle_layer
        self.g = GraphBuilder(name="minilm_sentence_encoder")

    def const(self, name: str, array: np.ndarray) -> str:
        return self.g.constant(name, array)

    def i64(self, name: str, values: list[int]) -> str:
        return self.const(name, np.array(values, dtype=np.int64))

    def dense(self, x: str, name: str, weight: np.ndarray, bias: np.ndarray) -> str:
        """x @ weight + bias, with weight given as [in, out]."""
        weight = weight.astype(np.float32)
        bias = bias.astype(np.float32)
        b = self.const(f"{name}.bias", bias)
        if self.precision == "int8":
            quantised, scale = quantize_columns(weight)
            return self.g.op(
                "DynamicQuantizeMatMul",
                x,
                self.const(f"{name}.weight_q", quantised),
                self.const(f"{name}.weight_scale", scale),
                "",
                b,
                domain="com.microsoft",
            )
        product = self.g.op("MatMul", x, self.const(f"{name}.weight", weight))
        return self.g.op("Add", product, b)

    def layer_norm(self, x: str, prefix: str) -> str:
        return self.g.op(
            "LayerNormalization",
            x,
            self.const(f"{prefix}.weight", self.w[f"{prefix}.weight"]),
            self.const(f"{prefix}.bias", self.w[f"{prefix}.bias"]),
            axis=-1,
            epsilon=self.eps,
        )

    def build(self) -> bytes:
        g, w, hidden = self.g, self.w, self.hidden
        head_dim = hidden // self.heads

        # Embeddings. Token type ids are always 0 for single sentences, so that row is folded
        # into the position table and the graph needs no third input.
        positions = (
            w["embeddings.position_embeddings.weight"]
            + w["embeddings.token_type_embeddings.weight"][0]
        )
        words = g.op(
            "Gather",
            self.const("word_embeddings", w["embeddings.word_embeddings.weight"]),
            "input_ids",
            axis=0,
        )
        seq_len = g.op("Gather", g.op("Shape", "input_ids"), self.i64("one_scalar", [1]), axis=0)
        pos = g.op(
            "Slice",
            self.const("position_embeddings", positions),
            self.i64("zero", [0]),
            seq_len,
            self.i64("axis0", [0]),
        )
        x = self.layer_norm(g.op("Add", words, pos), "embeddings.LayerNorm")

        # Additive attention mask [batch, 1, 1, tokens]: 0 for real tokens, -1e4 for padding.
        mask_f = g.op("Cast", "attention_mask", to=FLOAT)
        inverted = g.op("Sub", self.const("one_f", np.array(1.0, np.float32)), mask_f)
        additive = g.op("Mul", inverted, self.const("mask_value", np.array(-1e4, np.float32)))
        additive = g.op("Unsqueeze", additive, self.i64("mask_axes", [1, 2]))

        qkv_shape = self.i64("qkv_shape", [0, 0, 3, self.heads, head_dim])
        merged_shape = self.i64("merged_shape", [0, 0, hidden])
        scale = 1.0 / math.sqrt(head_dim)
        middle = x
        for i in range(self.layers):
            p = f"encoder.layer.{i}"
            # One matmul for Q, K and V; the 1/sqrt(d) score scale is folded into Q.
            qkv_w = np.concatenate(
                [
                    w[f"{p}.attention.self.query.weight"].T * scale,
                    w[f"{p}.attention.self.key.weight"].T,
                    w[f"{p}.attention.self.value.weight"].T,
                ],
                axis=1,
            )
            qkv_b = np.concatenate(
                [
                    w[f"{p}.attention.self.query.bias"] * scale,
                    w[f"{p}.attention.self.key.bias"],
                    w[f"{p}.attention.self.value.bias"],
                ]
            )
            qkv = self.dense(x, f"{p}.qkv", qkv_w, qkv_b)
            qkv = g.op("Transpose", g.op("Reshape", qkv, qkv_shape), perm=[2, 0, 3, 1, 4])
            q, k, v = g.node("Split", [qkv, self.i64(f"{p}.split", [1, 1, 1])], 3, axis=0)
            q, k, v = (
                g.op("Squeeze", t, self.i64(f"{p}.sq{j}", [0])) for j, t in enumerate((q, k, v))
            )
            scores = g.op(
                "Add", g.op("MatMul", q, g.op("Transpose", k, perm=[0, 1, 3, 2])), additive
            )
            context = g.op("MatMul", g.op("Softmax", scores, axis=-1), v)
            context = g.op("Reshape", g.op("Transpose", context, perm=[0, 2, 1, 3]), merged_shape)
            attn = self.dense(
                context,
                f"{p}.attention.output.dense",
                w[f"{p}.attention.output.dense.weight"].T,
                w[f"{p}.attention.output.dense.bias"],
            )
            x = self.layer_norm(g.op("Add", attn, x), f"{p}.attention.output.LayerNorm")

            inner = self.dense(
                x,
                f"{p}.intermediate.dense",
                w[f"{p}.intermediate.dense.weight"].T,
                w[f"{p}.intermediate.dense.bias"],
            )
            inner = self._gelu(inner, p)
            out = self.dense(
                inner,
                f"{p}.output.dense",
                w[f"{p}.output.dense.weight"].T,
                w[f"{p}.output.dense.bias"],
            )
            x = self.layer_norm(g.op("Add", out, x), f"{p}.output.LayerNorm")
            if i == self.middle_layer:
                middle = x

        pool_mask = g.op("Unsqueeze", mask_f, self.i64("pool_axes", [2]))
        self._mean_normalised(x, pool_mask, "embedding")
        self._mean_normalised(middle, pool_mask, "middle")

        return g.model(
            inputs=[
                value_info("input_ids", INT64, ["batch", "tokens"]),
                value_info("attention_mask", INT64, ["batch", "tokens"]),
            ],
            outputs=[
                value_info("embedding", FLOAT, ["batch", hidden]),
                value_info("middle", FLOAT, ["batch", hidden]),
            ],
            opsets={"": 17, "com.microsoft": 1},
            producer="inference.scorer.encoder_graph",
        )

    def _mean_normalised(self, x: str, mask: str, output: str) -> None:
        """Mean over the real tokens, then L2 normalisation, written to `output`."""
        g = self.g
        summed = g.op(
            "ReduceSum", g.op("Mul", x, mask), self.i64(f"{output}.axis", [1]), keepdims=0
        )
        counts = g.op("ReduceSum", mask, self.i64(f"{output}.count_axis", [1]), keepdims=0)
        counts = g.op("Max", counts, self.const(f"{output}.min_count", np.array(1e-9, np.float32)))
        mean = g.op("Div", summed, counts)
        # Opset 17 ReduceL2 still takes its axes as an attribute (ReduceSum takes an input).
        norm = g.op("ReduceL2", mean, axes=[1], keepdims=1)
        norm = g.op("Max", norm, self.const(f"{output}.min_norm", np.array(1e-12, np.float32)))
        g.node("Div", [mean, norm], [output])

    def _gelu(self, x: str, prefix: str) -> str:
        # Exact (erf) GELU, as BERT uses; ORT fuses this pattern into one kernel.
        g = self.g
        scaled = g.op("Div", x, self.const(f"{prefix}.sqrt2", np.array(math.sqrt(2.0), np.float32)))
        one_plus = g.op(
            "Add", g.op("Erf", scaled), self.const(f"{prefix}.gelu_one", np.array(1.0, np.float32))
        )
        half = g.op("Mul", x, self.const(f"{prefix}.gelu_half", np.array(0.5, np.float32)))
        return g.op("Mul", half, one_plus)


def build_encoder(model_dir: Path, precision: Precision = "int8", middle_layer: int = 2) -> bytes:
    """Return the serialised ONNX model for the sentence encoder in `model_dir`."""
    config = json.loads((model_dir / "config.json").read_text())
    weights = read_safetensors(model_dir / "model.safetensors")
    return _Encoder(weights, config, precision, middle_layer).build()
