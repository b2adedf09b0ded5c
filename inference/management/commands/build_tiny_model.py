"""Build the deterministic tiny Llama used by tests and the demo (seconds; skipped if current)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from inference.tinymodel.build import tiny_model_build


def default_target() -> Path:
    return Path(settings.RUN_DIR) / "models" / "tiny-llama"


class Command(BaseCommand):
    help = "Build the tiny random-weight Llama and its tokenizer into a local folder."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--target", type=Path, default=None)
        parser.add_argument("--force", action="store_true", help="Rebuild even if current.")

    def handle(self, *args: Any, **options: Any) -> None:
        target = options["target"] or default_target()
        built = tiny_model_build(target=target, force=options["force"])
        self.stdout.write(f"tiny model {'built' if built else 'already current'} in {target}")
