"""The teacher budget: a request is only sent when its worst-case cost still fits ``teacher.budget``."""

from __future__ import annotations

from dataclasses import dataclass


class BudgetExhausted(Exception):
    pass


@dataclass
class Budget:
    max_usd: float | None
    max_requests: int | None
    spent_usd: float = 0.0
    reserved_usd: float = 0.0
    requests: int = 0

    def reserve(self, worst_usd: float) -> None:
        """Claim one request with its worst-case cost, or raise BudgetExhausted."""
        if self.max_requests is not None and self.requests >= self.max_requests:
            raise BudgetExhausted
        if self.max_usd is not None and self.spent_usd + self.reserved_usd + worst_usd > self.max_usd:
            raise BudgetExhausted
        self.requests += 1
        self.reserved_usd += worst_usd

    def settle(self, worst_usd: float, actual_usd: float) -> None:
        self.reserved_usd -= worst_usd
        self.spent_usd += actual_usd
