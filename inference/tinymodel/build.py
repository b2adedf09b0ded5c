"""Build the tiny Llama: a byte-level BPE tokenizer trained on ``corpus.txt`` and random weights.

The weights mean nothing (the model writes gibberish), but everything a real server does with a
model happens: vLLM loads the config, the safetensors, the tokenizer and the chat template, and
serves chat, completions, streaming and metrics. The same inputs always give the same files, so a
folder built once can be reused until the builder or the corpus changes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

CORPUS = Path(__file__).with_name("corpus.txt")
# Bump when the builder's output would change, so old folders are rebuilt.
BUILDER_VERSION = 1
SEED = 1234
VOCAB_SIZE = 2048
MAX_POSITIONS = 512
STAMP = "tiny-model.json"

SPECIAL_TOKENS = ["<|begin|>", "<|end|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def fingerprint() -> str:
    """What the output depends on; stored in the folder to tell whether it is current."""
    digest = hashlib.sha256()
    digest.update(CORPUS.read_bytes())
    digest.update(f"{BUILDER_VERSION}:{SEED}:{VOCAB_SIZE}:{MAX_POSITIONS}".encode())
    digest.update(CHAT_TEMPLATE.encode())
    return digest.hexdigest()


def is_current(target: Path) -> bool:
    stamp = target / STAMP
    if not stamp.is_file():
        return False
    try:
        return json.loads(stamp.read_text()).get("fingerprint") == fingerprint()
    except ValueError:
        return False


def _build_tokenizer(folder: Path) -> object:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train([str(CORPUS)], trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|begin|>",  # noqa: S106 - a vocabulary entry, not a secret
        eos_token="<|end|>",  # noqa: S106
        pad_token="<|pad|>",  # noqa: S106
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    return fast


def _build_model(folder: Path, tokenizer: object) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    vocab = len(tokenizer)  # type: ignore[arg-type]
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|begin|>"),  # type: ignore[attr-defined]
        eos_token_id=tokenizer.convert_tokens_to_ids("<|end|>"),  # type: ignore[attr-defined]
        pad_token_id=tokenizer.convert_tokens_to_ids("<|pad|>"),  # type: ignore[attr-defined]
        tie_word_embeddings=False,
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder, safe_serialization=True)
    GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    ).save_pretrained(folder)


def tiny_model_build(*, target: Path, force: bool = False) -> bool:
    """Build the model into ``target`` unless a current build is there. True if it built."""
    target = target.resolve()
    if not force and is_current(target):
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and swap it in, so a half-written folder is never served.
    work = Path(tempfile.mkdtemp(prefix=".tiny-", dir=target.parent))
    work.chmod(0o755)  # mkdtemp makes it private; engines may run as another user
    try:
        tokenizer = _build_tokenizer(work)
        _build_model(work, tokenizer)
        (work / STAMP).write_text(
            json.dumps({"fingerprint": fingerprint(), "seed": SEED}, indent=2) + "\n"
        )
        if target.exists():
            shutil.rmtree(target)
        work.rename(target)
    finally:
        if work.exists():
            shutil.rmtree(work)
    return True
