"""Replica choice: least outstanding requests, prefix affinity with bounded load, ejection.

Prefix affinity ranks a deployment's replicas by rendezvous hashing of the prompt's leading text,
so requests that share a prefix (a system prompt, few-shot examples) land on the replica whose
prefix cache already holds it. The load bound (consistent hashing with bounded loads) stops a hot
prefix from piling onto one replica: a replica is skipped while it has more than ``load_factor``
times the average outstanding requests. A replica that failed is ejected for a cool-down; when
every replica is ejected they are all used again rather than refusing.

State is per process and lives on the event loop thread, so it needs no lock.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence

from inference.gateway.snapshot import ReplicaEntry

LOAD_FACTOR = 1.25


def affinity_digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=8).digest()


def rendezvous_rank(digest: bytes, replicas: Sequence[ReplicaEntry]) -> list[ReplicaEntry]:
    """Replicas ordered by their rendezvous weight for ``digest`` (stable across processes)."""
    return sorted(
        replicas,
        key=lambda r: hashlib.blake2b(digest + r.key.encode(), digest_size=8).digest(),
        reverse=True,
    )


class Balancer:
    def __init__(self, *, mode: str = "affinity", eject_s: float = 10.0) -> None:
        self.mode = mode
        self.eject_s = eject_s
        self.outstanding: dict[str, int] = {}
        self._ejected_until: dict[str, float] = {}
        self._turn = 0

    def choose(
        self,
        replicas: Sequence[ReplicaEntry],
        *,
        affinity_text: str = "",
        exclude: frozenset[str] = frozenset(),
    ) -> ReplicaEntry | None:
        candidates = [r for r in replicas if r.key not in exclude]
        if not candidates:
            return None
        if self._ejected_until:
            now = time.monotonic()
            healthy = [r for r in candidates if self._ejected_until.get(r.key, 0.0) <= now]
            candidates = healthy or candidates
        if len(candidates) == 1:
            return candidates[0]
        self._turn += 1
        if self.mode == "round_robin":
            return candidates[self._turn % len(candidates)]
        load = self.outstanding
        if self.mode == "affinity" and affinity_text:
            total = sum(load.get(r.key, 0) for r in candidates)
            bound = math.ceil(LOAD_FACTOR * (total + 1) / len(candidates))
            for replica in rendezvous_rank(affinity_digest(affinity_text), candidates):
                if load.get(replica.key, 0) + 1 <= bound:
                    return replica
        # Least outstanding; ties go round the ring so that idle replicas share the work.
        start = self._turn % len(candidates)
        ordered = candidates[start:] + candidates[:start]
        return min(ordered, key=lambda r: load.get(r.key, 0))

    def acquire(self, replica: ReplicaEntry) -> None:
        self.outstanding[replica.key] = self.outstanding.get(replica.key, 0) + 1

    def release(self, replica: ReplicaEntry) -> None:
        left = self.outstanding.get(replica.key, 1) - 1
        if left > 0:
            self.outstanding[replica.key] = left
        else:
            self.outstanding.pop(replica.key, None)

    def eject(self, replica: ReplicaEntry) -> None:
        self._ejected_until[replica.key] = time.monotonic() + self.eject_s

    def restore(self, replica: ReplicaEntry) -> None:
        self._ejected_until.pop(replica.key, None)

    def is_ejected(self, replica: ReplicaEntry) -> bool:
        return self._ejected_until.get(replica.key, 0.0) > time.monotonic()
