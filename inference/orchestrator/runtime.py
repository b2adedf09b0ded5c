"""Building the orchestrator from configuration, and keeping one per host."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from django.core.exceptions import ImproperlyConfigured

from inference.conf import OrchestratorConfig
from inference.orchestrator.backends.local import LocalBackend, LocalConfig
from inference.orchestrator.reconcile import Orchestrator

if TYPE_CHECKING:
    from inference.orchestrator.kubernetes.loop import KubernetesOrchestrator


class AlreadyRunning(Exception):
    pass


def local_backend(config: OrchestratorConfig, *, gpus: list[int] | None = None) -> LocalBackend:
    return LocalBackend(
        LocalConfig(
            run_dir=config.run_dir,
            host=config.host,
            ports=config.ports,
            python=config.engine_python,
            cpu_kvcache_gib=config.cpu_kvcache_gib,
            gpus=gpus,
        )
    )


def orchestrator_build(
    config: OrchestratorConfig, *, report: Callable[[str], None] | None = None
) -> Orchestrator | KubernetesOrchestrator:
    backend = os.environ.get("ORCHESTRATOR_BACKEND", "local")
    if backend == "kubernetes":
        from inference.orchestrator.kubernetes.loop import kubernetes_orchestrator

        return kubernetes_orchestrator(config, report=report)
    if backend != "local":
        raise ImproperlyConfigured(
            f"ORCHESTRATOR_BACKEND must be local or kubernetes, not {backend!r}"
        )
    return Orchestrator(backend=local_backend(config), config=config, report=report)


@contextmanager
def single_instance(run_dir: Path, name: str = "local") -> Iterator[None]:
    """Hold a lock file so that two orchestrators never manage the same host's replicas."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / f"orchestrator-{name}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AlreadyRunning(f"another orchestrator holds {path}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)
