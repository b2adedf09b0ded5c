"""Requests in flight per deployment, published by every gateway process for the autoscaler.

A gateway process counts the requests it holds per deployment in memory (a dict changed on the
event loop, no I/O per request). A publisher thread looks at the counts every
``GATEWAY_INFLIGHT_PUBLISH_MS`` and writes them when they changed, and again every
``REFRESH_S`` while they are not zero, so that a live process's entry never looks stale. Each
process writes only its own entry; the autoscaler (``inference.orchestrator.scaling``) sums the
entries that are fresh, so several processes add up and a process that died stops counting
after ``STALE_S``.

Two stores, chosen like the limiter's: with ``REDIS_URL``, one Redis hash per deployment
(``GATEWAY_INFLIGHT_KEY``) with a field per process, stamped with Redis's own clock so that
hosts' clocks do not matter; without it (the embedded default, one host), one small JSON file
per process in ``RUN_DIR/gateway-inflight``, judged fresh by its modification time.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

logger = logging.getLogger(__name__)

GATEWAY_INFLIGHT_KEY = "gateway:inflight:{deployment_id}"
REFRESH_S = 5.0  # a non-zero count is written again at least this often
STALE_S = 15.0  # an entry not written for this long is ignored (its process is gone)
KEY_TTL_S = 60  # a deployment's hash disappears when no process has written it for this long
FILE_DIR = "gateway-inflight"


class InflightStore(Protocol):
    def publish(self, token: str, counts: dict[str, int]) -> None:
        """Set this process's counts; a deployment with 0 has its entry removed."""

    def read(self, deployment_id: str) -> int | None:
        """The sum over live processes, or None when no process has an entry."""


# KEYS: one hash per deployment. ARGV: the process token, the key TTL, then a count per key.
_PUBLISH = """
local now = redis.call('TIME')[1]
for i = 1, #KEYS do
  local count = tonumber(ARGV[2 + i])
  if count > 0 then
    redis.call('HSET', KEYS[i], ARGV[1], count .. ':' .. now)
    redis.call('EXPIRE', KEYS[i], tonumber(ARGV[2]))
  else
    redis.call('HDEL', KEYS[i], ARGV[1])
  end
end
return 0
"""

# KEYS: the deployment's hash. ARGV: seconds after which an entry is stale (and removed).
# Returns -1 when the hash has no entry at all.
_READ = """
local now = tonumber(redis.call('TIME')[1])
local entries = redis.call('HGETALL', KEYS[1])
if #entries == 0 then
  return -1
end
local total = 0
for i = 1, #entries, 2 do
  local value = entries[i + 1]
  local sep = string.find(value, ':', 1, true)
  local count = tonumber(string.sub(value, 1, sep - 1))
  local at = tonumber(string.sub(value, sep + 1))
  if count and at and now - at <= tonumber(ARGV[1]) then
    total = total + count
  else
    redis.call('HDEL', KEYS[1], entries[i])
  end
end
return total
"""


class RedisInflightStore:
    def __init__(self, url: str) -> None:
        import redis

        self._redis: Any = redis.Redis.from_url(url)
        self._publish = self._redis.register_script(_PUBLISH)
        self._read = self._redis.register_script(_READ)

    def publish(self, token: str, counts: dict[str, int]) -> None:
        if not counts:
            return
        keys = [GATEWAY_INFLIGHT_KEY.format(deployment_id=d) for d in counts]
        self._publish(keys=keys, args=[token, KEY_TTL_S, *counts.values()])

    def read(self, deployment_id: str) -> int | None:
        key = GATEWAY_INFLIGHT_KEY.format(deployment_id=deployment_id)
        total = int(self._read(keys=[key], args=[int(STALE_S)]))
        return None if total < 0 else total

    def close(self) -> None:
        self._redis.close()


class FileInflightStore:
    """One JSON file per process: ``{deployment_id: count}``, replaced atomically."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._counts: dict[str, int] = {}

    def publish(self, token: str, counts: dict[str, int]) -> None:
        self._counts.update(counts)
        self._counts = {d: n for d, n in self._counts.items() if n > 0}
        path = self.directory / f"{token}.json"
        if not self._counts:
            path.unlink(missing_ok=True)
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".tmp")
        partial.write_text(json.dumps(self._counts))
        os.replace(partial, path)

    def read(self, deployment_id: str) -> int | None:
        now = time.time()
        found: int | None = None
        try:
            paths = list(self.directory.glob("*.json"))
        except OSError:
            return None
        for path in paths:
            try:
                age = now - path.stat().st_mtime
                if age > STALE_S:
                    if age > KEY_TTL_S:
                        path.unlink(missing_ok=True)  # a process that died without cleaning up
                    continue
                counts = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # replaced or removed while being read: the next pass sees it
            count = counts.get(deployment_id) if isinstance(counts, dict) else None
            if isinstance(count, int) and count > 0:
                found = (found or 0) + count
        return found

    def close(self) -> None:
        return None


def inflight_store(redis_url: str, run_dir: Path) -> RedisInflightStore | FileInflightStore:
    if redis_url:
        return RedisInflightStore(redis_url)
    return FileInflightStore(run_dir / FILE_DIR)


_reader: tuple[tuple[str, str], RedisInflightStore | FileInflightStore] | None = None


def gateway_inflight_read(deployment_id: object) -> int | None:
    """Requests the gateways hold for a deployment now, summed over live gateway processes
    (None when none has reported any). For the autoscaler."""
    global _reader
    from django.conf import settings

    where = (settings.REDIS_URL, str(settings.RUN_DIR))
    if _reader is None or _reader[0] != where:
        _reader = (where, inflight_store(settings.REDIS_URL, Path(settings.RUN_DIR)))
    try:
        return _reader[1].read(str(deployment_id))
    except Exception:
        # The autoscaler still has the replicas' own load; a missing figure must not stop it.
        logger.exception("gateway in-flight counts unavailable")
        return None


class InflightPublisher:
    """A daemon thread that publishes ``counts()`` when it changes (never per request)."""

    def __init__(
        self,
        counts: Callable[[], dict[str, int]],
        store: InflightStore,
        *,
        interval_s: float = 1.0,
    ) -> None:
        self._counts = counts
        self.store = store
        self.interval_s = interval_s
        self.token = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._published: dict[str, int] = {}
        self._published_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.writes = 0

    def publish_once(self) -> bool:
        """Write the counts if they changed (or a non-zero one is due a refresh)."""
        current = self._counts()
        now = time.monotonic()
        due = bool(current) and now - self._published_at >= REFRESH_S
        if current == self._published and not due:
            return False
        # Deployments that went back to zero are written as 0, which removes their entry.
        changes = {d: 0 for d in self._published if d not in current}
        changes.update(current)
        self.store.publish(self.token, changes)
        self._published, self._published_at = current, now
        self.writes += 1
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.publish_once()
            except Exception:
                logger.exception("publishing in-flight counts failed; will retry")

    def start(self) -> None:
        if self.interval_s <= 0:
            return
        self._thread = threading.Thread(target=self._run, name="gateway-inflight", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop and withdraw this process's entries (requests have finished by now)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._published:
            try:
                self.store.publish(self.token, dict.fromkeys(self._published, 0))
            except Exception:
                logger.exception("withdrawing in-flight counts failed; they expire on their own")
            self._published = {}
        close = getattr(self.store, "close", None)
        if close is not None:
            close()
