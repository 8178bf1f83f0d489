"""Is each remote reachable now? A quick probe per remote, cached for a few seconds.

`gitmld status` must answer fast even when a remote hangs, and a dashboard polling it must not
turn into load on the bucket: each remote is probed with one request (no retries) bounded
by a short timeout, the answer is kept for TTL seconds, and concurrent status requests share
one probe in flight.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gitmld.daemon.remote.base import RemoteError

PROBE_TIMEOUT = 3.0  # seconds a probe may take before the remote counts as unreachable
TTL = 5.0  # seconds a probe's answer is reused


@dataclass(frozen=True, slots=True)
class ProbeResult:
    reachable: bool
    error: str | None  # why not, naming the remote; None when reachable
    latency: float  # seconds the probe took
    at: float  # monotonic time it finished


class Reachability:
    """Probe results per remote key (the service's store key)."""

    def __init__(self, *, ttl: float = TTL, timeout: float = PROBE_TIMEOUT) -> None:
        self.ttl = ttl
        self.timeout = timeout
        self._results: dict[str, ProbeResult] = {}
        self._probes: dict[str, asyncio.Task[ProbeResult]] = {}

    async def refresh(self, probes: Mapping[str, Callable[[], Awaitable[None]]]) -> None:
        """Probe every key whose answer is older than the TTL, concurrently; returns within
        about `timeout` seconds whatever the remotes do."""
        now = time.monotonic()
        tasks = []
        for key, probe in probes.items():
            known = self._results.get(key)
            if known is not None and now - known.at < self.ttl:
                continue
            task = self._probes.get(key)
            if task is None:
                task = asyncio.create_task(self._probe(key, probe), name=f"probe {key}")
                self._probes[key] = task
            tasks.append(task)
        if tasks:
            await asyncio.gather(*(asyncio.shield(t) for t in tasks))

    async def _probe(self, key: str, probe: Callable[[], Awaitable[None]]) -> ProbeResult:
        start = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout):
                await probe()
            error = None
        except TimeoutError:
            error = f"no answer within {self.timeout:g} s"
        except RemoteError as exc:
            error = str(exc)
        except Exception as exc:  # status reports it; it must not fail the status request
            error = f"{type(exc).__name__}: {exc}"
        finally:
            self._probes.pop(key, None)
        end = time.monotonic()
        result = ProbeResult(error is None, error, end - start, end)
        self._results[key] = result
        return result

    def describe(self, key: str) -> dict[str, Any]:
        """The status document's reachability fields of one remote (None: never probed)."""
        result = self._results.get(key)
        if result is None:
            return {"reachable": None, "error": None, "probe_ms": None, "probed_seconds_ago": None}
        return {
            "reachable": result.reachable,
            "error": result.error,
            "probe_ms": round(result.latency * 1000, 1),
            "probed_seconds_ago": round(time.monotonic() - result.at, 1),
        }

    def forget(self, key: str) -> None:
        self._results.pop(key, None)
