"""Configuration of deployments and the orchestrator, from the environment (see the README)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from console.envvars import env_int, env_list, env_str


def model_roots() -> list[str]:
    """Directories under which a deployment may name a local model (MODEL_ROOTS)."""
    configured = getattr(settings, "MODEL_ROOTS", None)
    if configured is None:
        configured = env_list("MODEL_ROOTS", [str(Path(settings.RUN_DIR) / "models")])
    return [os.path.normpath(os.path.abspath(root)) for root in configured]


def _port_range(raw: str) -> tuple[int, int]:
    try:
        low, high = (int(part) for part in raw.split("-", 1))
    except ValueError:
        raise ImproperlyConfigured(
            f"ORCHESTRATOR_PORTS must look like 18000-18999, got {raw!r}"
        ) from None
    if not 1024 <= low <= high <= 65535:
        raise ImproperlyConfigured(f"ORCHESTRATOR_PORTS {raw!r} is not a valid range")
    return low, high


@dataclass
class OrchestratorConfig:
    run_dir: Path
    host: str = "127.0.0.1"
    ports: tuple[int, int] = (18000, 18999)
    interval_s: float = 2.0
    restart_limit: int = 5
    backoff_base_s: float = 2.0
    backoff_cap_s: float = 60.0
    start_timeout_s: float = 900.0
    drain_timeout_s: float = 30.0
    stop_grace_s: float = 20.0
    health_failures: int = 3
    demand_ttl_s: float = 300.0
    cpu_kvcache_gib: int = 1
    engine_python: str = sys.executable

    @classmethod
    def from_env(cls) -> OrchestratorConfig:
        backoff_base_s = env_int("ORCHESTRATOR_BACKOFF_BASE_S", 2, minimum=1)
        backoff_cap_s = env_int("ORCHESTRATOR_BACKOFF_CAP_S", 60, minimum=1)
        if backoff_cap_s < backoff_base_s:
            raise ImproperlyConfigured(
                f"ORCHESTRATOR_BACKOFF_CAP_S must be at least ORCHESTRATOR_BACKOFF_BASE_S "
                f"({backoff_base_s}), got {backoff_cap_s}"
            )
        return cls(
            run_dir=Path(settings.RUN_DIR),
            host=env_str("ORCHESTRATOR_HOST", "127.0.0.1"),
            ports=_port_range(env_str("ORCHESTRATOR_PORTS", "18000-18999")),
            interval_s=env_int("ORCHESTRATOR_INTERVAL_S", 2, minimum=1),
            restart_limit=env_int("ORCHESTRATOR_RESTART_LIMIT", 5, minimum=1),
            backoff_base_s=backoff_base_s,
            backoff_cap_s=backoff_cap_s,
            start_timeout_s=env_int("ORCHESTRATOR_START_TIMEOUT_S", 900, minimum=1),
            drain_timeout_s=env_int("ORCHESTRATOR_DRAIN_TIMEOUT_S", 30, minimum=0),
            cpu_kvcache_gib=env_int("VLLM_CPU_KVCACHE_GIB", 1, minimum=1),
            engine_python=env_str("ORCHESTRATOR_ENGINE_PYTHON", sys.executable),
        )
