"""Token buckets: one per WebSocket connection, one per user across this edge process."""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], float]


class TokenBucket:
    """Allows `burst` at once, refilling at `rate` per second."""

    __slots__ = ("_clock", "_stamp", "burst", "rate", "tokens")

    def __init__(self, rate: float, burst: int, clock: Clock = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self._clock = clock
        self._stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        self.tokens = min(self.burst, self.tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def take(self) -> bool:
        """Spend one token; False (spending nothing) when the bucket is empty."""
        self._refill()
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    @property
    def retry_after(self) -> float:
        """Seconds until one token is available."""
        self._refill()
        return max(0.0, (1 - self.tokens) / self.rate)

    @property
    def full(self) -> bool:
        self._refill()
        return self.tokens >= self.burst


class UserLimiter:
    """One bucket per (tenant, user), shared by that user's HTTP requests and WebSocket messages.

    A full bucket is indistinguishable from a new one, so full buckets are dropped whenever the
    table doubles: memory follows the number of recently active users, not of all users ever.
    """

    def __init__(self, rate: float, burst: int, clock: Clock = time.monotonic) -> None:
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self._prune_at = 1024

    def take(self, tenant_id: str, user_id: str) -> float | None:
        """None if allowed, else the seconds to wait before the user may try again."""
        key = (tenant_id, user_id)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._prune_at:
                self._prune()
            bucket = self._buckets[key] = TokenBucket(self._rate, self._burst, self._clock)
        if bucket.take():
            return None
        return bucket.retry_after

    def _prune(self) -> None:
        self._buckets = {k: b for k, b in self._buckets.items() if not b.full}
        self._prune_at = max(1024, 2 * len(self._buckets))

    def __len__(self) -> int:
        return len(self._buckets)
