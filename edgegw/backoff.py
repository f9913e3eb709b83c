"""Waiting between retries: a module that will not answer, a broker that is down, a crashed stage."""

from __future__ import annotations

import random


class Backoff:
    """Exponential backoff with full jitter, so thirty gateways do not retry in step."""

    def __init__(self, first: float = 0.5, limit: float = 30.0):
        self.first, self.limit, self.attempt = first, limit, 0

    def next(self) -> float:
        delay = min(self.limit, self.first * 2**self.attempt)
        self.attempt += 1
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self.attempt = 0
