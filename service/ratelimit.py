"""Per-key rate limits: a token bucket in Redis, shared by every API process, or in this process.

Each key has a bucket of ``burst`` tokens that refills at ``rate_per_min``; a
request takes one token, and a request that finds none is told how long until
one is back (``Retry-After``). In Redis the bucket is one hash per key,
updated by a Lua script (atomic, on Redis's own clock, so API hosts' clocks
do not matter) and expiring once it would be full again. Embedded mode (no
Redis) keeps the buckets in the process. When Redis does not answer, the
process's own buckets take over: a limit a little looser for a while rather
than an API that refuses everything.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)

PREFIX = "assay:ratelimit:"

# KEYS[1]: the bucket; ARGV: tokens per second, capacity. Returns {allowed (0/1), seconds to wait}.
TOKEN_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return {allowed, tostring(wait)}
"""


@dataclass(frozen=True)
class Limit:
    """A bucket's size: ``rate_per_min`` tokens a minute, at most ``burst`` at once."""

    rate_per_min: int
    burst: int

    @property
    def per_second(self) -> float:
        return self.rate_per_min / 60.0


class RateLimiter(Protocol):
    async def hit(self, key: str, limit: Limit) -> float | None:
        """Take a token from ``key``'s bucket: None when allowed, else the seconds until one is back."""
        ...

    async def close(self) -> None: ...


class LocalLimiter:
    """Token buckets in this process (embedded mode, and the fallback when Redis does not answer)."""

    def __init__(self, max_keys: int = 100_000, clock: Any = time.monotonic) -> None:
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._max_keys = max_keys
        self._clock = clock

    async def hit(self, key: str, limit: Limit) -> float | None:
        return self.take(key, limit)

    def take(self, key: str, limit: Limit) -> float | None:
        # Runs on the event loop without awaiting: no other request interleaves.
        now = self._clock()
        tokens, ts = self._buckets.pop(key, (float(limit.burst), now))
        tokens = min(float(limit.burst), tokens + max(0.0, now - ts) * limit.per_second)
        wait: float | None = None
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / limit.per_second
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)  # the least recently used key; it starts full again
        return wait

    async def close(self) -> None:
        self._buckets.clear()


class RedisLimiter:
    """Token buckets in Redis, shared by every API process that uses the same Redis."""

    def __init__(self, url: str, fallback: LocalLimiter | None = None) -> None:
        import redis.asyncio as aioredis

        # Short timeouts: a slow Redis must not hold requests up; the fallback answers instead.
        self._redis = aioredis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._script = self._redis.register_script(TOKEN_BUCKET)
        self._fallback = fallback or LocalLimiter()
        self._failing = False

    async def hit(self, key: str, limit: Limit) -> float | None:
        try:
            allowed, wait = await self._script(keys=[PREFIX + key], args=[limit.per_second, limit.burst])
        except Exception as exc:
            if not self._failing:
                log.warning("rate limits: Redis does not answer (%s); limiting in this process", exc)
                self._failing = True
            return self._fallback.take(key, limit)
        if self._failing:
            log.info("rate limits: Redis answers again")
            self._failing = False
        return None if int(allowed) else float(wait)

    async def close(self) -> None:
        await self._redis.aclose()  # type: ignore[attr-defined]  # redis>=5; the stubs predate it


def retry_after_s(wait: float) -> int:
    """Whole seconds to wait (Retry-After), at least one."""
    return max(1, math.ceil(wait))


def build_limiter(broker_url: str) -> RateLimiter:
    """Redis when the broker is Redis (every API process shares the buckets), else this process."""
    if broker_url.startswith(("redis://", "rediss://", "unix://")):
        return RedisLimiter(broker_url)
    return LocalLimiter()
