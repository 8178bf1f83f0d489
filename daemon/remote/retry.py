"""Retry transient remote failures with capped exponential backoff and full jitter.

Full jitter (sleep uniformly in [0, min(cap, base * 2**n)]) spreads out many clients that
failed together (a throttled bucket, a restarted endpoint), so they do not retry in lockstep.
Attempts and total time are both bounded, so a dead endpoint turns into one clear
`RemoteUnavailable` instead of a hang; every retry is counted in the remote's stats.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import aiohttp
import botocore.exceptions as bex
from gitmld.daemon.remote.base import RemoteStats, RemoteUnavailable

T = TypeVar("T")

# S3 error codes that mean "try again later", whatever the HTTP status says.
TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
    "RequestLimitExceeded", "TooManyRequestsException", "ProvisionedThroughputExceededException",
    "RequestTimeout", "RequestTimeoutException", "InternalError", "ServiceUnavailable",
    "PriorRequestNotComplete", "BandwidthLimitExceeded",
})

_TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    TimeoutError,  # asyncio.TimeoutError is TimeoutError on 3.11
    ConnectionError,  # reset, refused, aborted, broken pipe
    aiohttp.ClientConnectionError,
    aiohttp.ClientPayloadError,
    bex.ConnectionError,  # EndpointConnectionError (refused, DNS), ConnectTimeoutError
    bex.HTTPClientError,  # ReadTimeoutError, ConnectionClosedError, ResponseStreamingError
    bex.ResponseStreamingError,
    bex.IncompleteReadError,
)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard to try: at most `attempts` tries, no new try after `deadline` seconds."""

    attempts: int = 8
    base_delay: float = 0.2
    max_delay: float = 10.0
    deadline: float = 120.0

    def backoff(self, retry_number: int, rand: Callable[[], float] = random.random) -> float:
        """Full-jitter delay before retry `retry_number` (1 for the first retry)."""
        cap = min(self.max_delay, self.base_delay * (2 ** (retry_number - 1)))
        return cap * rand()


def is_transient(exc: BaseException) -> bool:
    """True for failures a later attempt may not see: throttling, 5xx, timeouts, resets."""
    if isinstance(exc, bex.SSLError):
        return False  # certificate or TLS setup problems do not heal by retrying
    if isinstance(exc, _TRANSIENT_TYPES):
        return True
    response = getattr(exc, "response", None)  # botocore ClientError
    if isinstance(exc, bex.ClientError) and isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = response.get("Error", {}).get("Code")
        if code in TRANSIENT_CODES:
            return True
        if isinstance(status, int) and (status >= 500 or status == 429):
            return True
    return False


async def with_retry(
    op: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    stats: RemoteStats,
    remote_url: str,
    object_name: str | None,
    classify: Callable[[BaseException], bool] = is_transient,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Run op until it succeeds; re-raise permanent errors at once; RemoteUnavailable at the end.

    An attempt in progress is never cut short by the deadline (the transport's own connect
    and read timeouts bound it); the deadline only decides whether another attempt starts.
    """
    start = clock()
    attempt = 0
    while True:
        attempt += 1
        try:
            return await op()
        except Exception as exc:
            if not classify(exc):
                raise
            elapsed = clock() - start
            delay = policy.backoff(attempt)
            if attempt >= policy.attempts or elapsed + delay > policy.deadline:
                raise RemoteUnavailable(
                    remote_url, object_name,
                    f"gave up after {attempt} attempt{'s' if attempt != 1 else ''} over {elapsed:.1f} s;"
                    f" last error: {type(exc).__name__}: {exc}",
                ) from exc
        stats.retries += 1
        await sleep(delay)
