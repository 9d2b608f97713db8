"""ROS-free building blocks of the policy's frame pipeline.

:class:`LatestSlot` hands the newest camera frame from the executor thread to the
inference thread: putting a frame replaces (and counts) one not yet taken, so
inference always works on the newest frame and nothing queues up behind a slow
model. :class:`RollingWindow` keeps recent samples for rates and percentiles.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

T = TypeVar("T")


@dataclass(frozen=True)
class Slotted(Generic[T]):
    item: T
    received_monotonic: float


class LatestSlot(Generic[T]):
    """A one-item mailbox where a newer item replaces an older one."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Slotted[T] | None = None
        self._closed = False
        self.replaced = 0   # items overwritten before anyone took them

    def put(self, item: T) -> None:
        with self._cond:
            if self._item is not None:
                self.replaced += 1
            self._item = Slotted(item, time.monotonic())
            self._cond.notify()

    def take(self, timeout: float | None = None) -> Slotted[T] | None:
        """The newest item, waiting up to ``timeout`` s; None on timeout or close."""
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item

    def clear(self) -> int:
        """Drop a pending item; returns how many were dropped (0 or 1)."""
        with self._cond:
            dropped = int(self._item is not None)
            self._item = None
            return dropped

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class RollingWindow:
    """Timestamped samples over the last ``horizon_s`` seconds (thread-safe)."""

    def __init__(self, horizon_s: float = 10.0, max_samples: int = 4096) -> None:
        self.horizon_s = horizon_s
        self._samples: deque[tuple[float, float]] = deque(maxlen=max_samples)
        self._lock = threading.Lock()

    def add(self, value: float, now: float | None = None) -> None:
        with self._lock:
            self._samples.append((time.monotonic() if now is None else now, float(value)))

    def _recent(self, now: float | None) -> list[tuple[float, float]]:
        cutoff = (time.monotonic() if now is None else now) - self.horizon_s
        with self._lock:
            return [s for s in self._samples if s[0] >= cutoff]

    def rate_hz(self, now: float | None = None) -> float:
        recent = self._recent(now)
        if len(recent) < 2:
            return 0.0
        span = recent[-1][0] - recent[0][0]
        return (len(recent) - 1) / span if span > 0 else 0.0

    def percentile(self, q: float, now: float | None = None) -> float:
        values = [v for _, v in self._recent(now)]
        return float(np.percentile(values, q)) if values else float("nan")
