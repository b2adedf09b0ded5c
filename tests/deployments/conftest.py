from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def model_root(tmp_path: Path, settings) -> Path:  # type: ignore[no-untyped-def]
    """An allowed local model directory with a model folder in it."""
    root = tmp_path / "models"
    (root / "tiny").mkdir(parents=True)
    settings.MODEL_ROOTS = [str(root)]
    return root
