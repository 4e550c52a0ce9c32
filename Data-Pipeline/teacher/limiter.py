"""Client-side rate limiting: token buckets for requests/minute and tokens/minute.

Each bucket holds at most one second's worth of its rate (at least one unit),
so over any window of T seconds at most ``rate/60 * T + burst`` units pass: no
minute-start bursts that providers answer with 429s. Waiters are served in
arrival order (one lock).
"""

from __future__ import annotations

import asyncio
import time


class TokenBucket:
    def __init__(self, per_minute: float, burst: float | None = None, clock=time.monotonic):
        self.rate = per_minute / 60.0
        self.capacity = burst if burst is not None else max(1.0, self.rate)
        self._clock = clock
        self._level = self.capacity
        self._stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._level = min(self.capacity, self._level + (now - self._stamp) * self.rate)
        self._stamp = now

    def wait_time(self, amount: float) -> float:
        """Seconds until ``amount`` is available (0 when it is now)."""
        self._refill()
        # A request larger than the bucket may go once the bucket is full (it then runs a debt).
        need = min(amount, self.capacity)
        return 0.0 if self._level >= need else (need - self._level) / self.rate

    def take(self, amount: float) -> None:
        self._refill()
        self._level -= amount

    def give_back(self, amount: float) -> None:
        self._refill()
        self._level = min(self.capacity, self._level + amount)


class RateLimiter:
    """Requests/minute and tokens/minute together; ``acquire`` waits until both allow the request."""

    def __init__(self, requests_per_minute: float, tokens_per_minute: float):
        self.requests = TokenBucket(requests_per_minute)
        self.tokens = TokenBucket(tokens_per_minute)
        self._lock = asyncio.Lock()

    async def acquire(self, tokens: int) -> None:
        async with self._lock:
            while True:
                wait = max(self.requests.wait_time(1), self.tokens.wait_time(tokens))
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
            self.requests.take(1)
            self.tokens.take(tokens)

    def settle(self, reserved: int, used: int) -> None:
        """Return the unused part of a token reservation once the real usage is known."""
        if used < reserved:
            self.tokens.give_back(reserved - used)
        elif used > reserved:
            self.tokens.take(used - reserved)
