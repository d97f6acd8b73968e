"""Group pages into batches and run them with splitting on failure (`run_split`, the one batch
driver `convert` and `sweep` share). Pure: no I/O, no torch."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger("ocrprune")


def chunks(items: Sequence[T], size: int) -> Iterator[list[T]]:
    """Consecutive slices of at most `size` items, in order."""
    if size < 1:
        raise ValueError("size must be at least 1")
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def halves(items: Sequence[T]) -> tuple[list[T], list[T]]:
    """Split a batch in two (first half not smaller) to retry after running out of memory."""
    middle = (len(items) + 1) // 2
    return list(items[:middle]), list(items[middle:])


# ---- the shared batch driver: run, split on failure, one result per item --------------------------


@dataclass(frozen=True)
class BatchFailure:
    """Why an item got no output: the message for its page (`model_error`)."""

    message: str


def is_oom(exc: BaseException) -> bool:
    """Out of device memory (torch's `OutOfMemoryError`, or a CUDA/allocator message)."""
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


def run_split(
    items: Sequence[T],
    run: Callable[[list[T]], Sequence[R]],
    deliver: Callable[[T, R | BatchFailure], None],
    recover: Callable[[], None] = lambda: None,
) -> None:
    """Run `items` as one batch and `deliver` each item's output as soon as its batch is done.

    - `run` must return one output per item, in order; any other count fails the whole batch
      (which output belongs to which item is unknowable, so none is trusted);
    - if `run` raises (out of memory, or a page that breaks the batch), `recover` is called and the
      batch is halved and retried, down to single items; a single item that still fails gets a
      `BatchFailure` naming the error. Interrupts (`KeyboardInterrupt`) are not caught.
    """
    batch = list(items)
    try:
        outputs = list(run(batch))
    except Exception as exc:  # noqa: BLE001 - the per-page boundary: record and go on
        recover()
        if len(batch) > 1:
            kind = "out of memory" if is_oom(exc) else type(exc).__name__
            log.info("batch of %d pages failed (%s); retrying in smaller batches", len(batch), kind)
            first, second = halves(batch)
            run_split(first, run, deliver, recover)
            run_split(second, run, deliver, recover)
            return
        log.debug("model error on a single page", exc_info=True)
        what = "CUDA out of memory" if is_oom(exc) else f"{type(exc).__name__}: {exc}"
        deliver(batch[0], BatchFailure(what))
        return
    if len(outputs) != len(batch):
        message = f"the engine returned {len(outputs)} outputs for {len(batch)} pages"
        log.error("%s; marking the batch's pages model_error", message)
        for item in batch:
            deliver(item, BatchFailure(message))
        return
    for item, output in zip(batch, outputs, strict=True):
        deliver(item, output)
