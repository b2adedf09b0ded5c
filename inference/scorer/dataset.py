"""The routing outcome data set on disk, and an embedding cache for training runs.

The data lives outside the repository (`../shared/data/routing` from the repository root by
default, or `ROUTER_DATA_DIR`); only what is derived from it is committed.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inference.scorer.embedder import Embedder
from inference.scorer.fit import HeadInputs, head_inputs
from inference.scorer.outcomes import OutcomeSet, read_outcomes

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "routing"
CACHE_DIR = REPO_ROOT / ".cache" / "scorer"


def data_dir() -> Path:
    return Path(os.environ.get("ROUTER_DATA_DIR", str(DEFAULT_DATA_DIR)))


@dataclass(frozen=True)
class OutcomeFile:
    name: str  # the file's stem, e.g. "mmlu_astronomy"
    sha256: str
    outcomes: OutcomeSet


def load_outcome_files(paths: list[Path]) -> list[OutcomeFile]:
    files = []
    for path in sorted(paths):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        files.append(OutcomeFile(path.stem, digest, read_outcomes(path)))
    return files


def load_data_dir(directory: Path) -> list[OutcomeFile]:
    paths = sorted(directory.glob("*.csv"))
    if not paths:
        raise FileNotFoundError(f"no outcome files (*.csv) in {directory}")
    return load_outcome_files(paths)


def _inputs_code_digest() -> str:
    """A digest of everything that shapes the head's inputs, so that a cache entry made by
    other code (or another onnxruntime) is never reused."""
    import onnxruntime

    here = Path(__file__).resolve().parent
    digest = hashlib.sha256(onnxruntime.__version__.encode())
    for name in ("onnx_proto.py", "encoder_graph.py", "embedder.py", "features.py"):
        digest.update((here / name).read_bytes())
    return digest.hexdigest()[:12]


def cached_head_inputs(file: OutcomeFile, embedder: Embedder, verbose: bool = False) -> HeadInputs:
    """Embed a file's prompts, reusing an earlier run's result for the same file contents and
    embedder settings (the cache is in the git-ignored `.cache/`)."""
    config = embedder.config
    key = (
        f"{file.sha256[:16]}-{_inputs_code_digest()}"
        f"-{config.precision}-{config.max_tokens}-{config.head_share}"
    )
    path = CACHE_DIR / f"{file.name}-{key}.npz"
    if path.exists():
        with np.load(path) as data:
            return HeadInputs(data["embeddings"], data["features"])
    if verbose:
        print(f"embedding {file.name} ({len(file.outcomes.rows)} prompts)", flush=True)
    inputs = head_inputs(file.outcomes.prompts, embedder)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, embeddings=inputs.embeddings, features=inputs.features)
    tmp.replace(path)
    return inputs
