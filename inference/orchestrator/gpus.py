"""GPU discovery (NVML) and packing replicas onto GPUs.

Packing is a pure function: it never gives one GPU to two replicas and, when a replica does not
fit, says how many GPUs it needed and how many were free.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str = ""
    memory_total_mib: int = 0
    memory_free_mib: int = 0


def gpus_discover() -> list[Gpu]:
    """The host's NVIDIA GPUs through NVML; an empty list where there is no driver or library."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as error:
        logger.info("no NVIDIA GPU found: %s", error)
        return []
    try:
        found = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            found.append(
                Gpu(
                    index=index,
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    memory_total_mib=int(memory.total) // 2**20,
                    memory_free_mib=int(memory.free) // 2**20,
                )
            )
        return found
    finally:
        pynvml.nvmlShutdown()


@dataclass(frozen=True)
class Packing:
    assigned: dict[str, list[int]] = field(default_factory=dict)
    """Replica key -> the GPU indices it gets."""
    unplaced: dict[str, str] = field(default_factory=dict)
    """Replica key -> why it could not be placed."""


def gpus_pack(
    *,
    gpus: Sequence[int],
    in_use: Iterable[Sequence[int]],
    wanted: Mapping[str, int],
) -> Packing:
    """Give each wanted replica (key -> GPU count) distinct free GPUs, in the order given.

    ``in_use`` are the GPU sets running replicas hold. A replica takes the lowest-numbered free
    GPUs, which keeps a tensor-parallel group on neighbouring devices. One that does not fit is
    left out with a reason; smaller ones after it may still fit.
    """
    taken: set[int] = set()
    for held in in_use:
        taken.update(held)
    free = [index for index in sorted(set(gpus)) if index not in taken]
    assigned: dict[str, list[int]] = {}
    unplaced: dict[str, str] = {}
    for key, count in wanted.items():
        if count < 1:
            assigned[key] = []
            continue
        if count > len(free):
            unplaced[key] = (
                f"needs {count} GPU{'s' if count != 1 else ''}, "
                f"{len(free)} of {len(set(gpus))} free"
            )
            continue
        assigned[key], free = free[:count], free[count:]
    return Packing(assigned=assigned, unplaced=unplaced)
