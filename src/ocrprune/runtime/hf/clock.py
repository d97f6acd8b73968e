"""Device-honest stage clocks: CUDA events on a GPU, `perf_counter` on the CPU.

Marks are cheap (no sync when they are taken); `elapsed_ms` waits only for the later mark, so timing
never serialises the pipeline more than reading the result does.
"""

from __future__ import annotations

import time
from typing import Any

import torch


class StageClock:
    """Take marks and read the milliseconds between two of them."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def mark(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def elapsed_ms(self, start: Any, end: Any) -> float:
        if self.cuda:
            end.synchronize()
            return float(start.elapsed_time(end))
        return (end - start) * 1000.0

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
