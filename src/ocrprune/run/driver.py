"""The one stream -> batch -> backend loop that `convert` and `sweep` share.

`drive` consumes a `PageStream`'s events in order, hands each to a `StreamHandler`, collects the
pages the handler wants run into batches of `handler.batch_size` and hands each full batch (and the
last, partial one) to `handler.run_batch`. The handler decides what a page is, what an event means
for its documents and what a batch does (convert runs the engine through `batching.run_split`;
sweep encodes once and decodes per keep setting): the loop itself is written once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from ocrprune.raster import DocDone, DocFailed, DocOpened, PageRendered, PageStream

T = TypeVar("T")


class StreamHandler(Generic[T]):
    """What a loop over a page stream does at each event. Every hook does nothing by default."""

    @property
    def batch_size(self) -> int:
        """Pages per batch, read after each page is queued (it may change once an engine opens)."""
        return 1

    def opened(self, event: DocOpened) -> None:
        """A document opened: its page numbers are known."""

    def rendered(self, event: PageRendered) -> T | None:
        """A page was rendered: the item to queue for the next batch, or None when the page is
        settled here (it failed to render, or an earlier run already converted it)."""
        return None

    def failed(self, event: DocFailed, queued: Sequence[T]) -> None:
        """A document could not be used (or broke mid-way); `queued` is the batch not yet run."""

    def done(self, event: DocDone) -> None:
        """Every page of a document has been delivered."""

    def run_batch(self, items: list[T]) -> None:
        """Run a batch of queued items (never empty)."""

    def settle(self) -> None:
        """Called after every event and every batch (convert writes the documents now complete)."""

    def stopped(self) -> bool:
        """True to stop reading the stream (`--fail-fast`); the queued batch is then not run."""
        return False


def drive(stream: PageStream, handler: StreamHandler[T]) -> None:
    """Read `stream` to its end (or until `handler.stopped()`), batching what the handler queues.
    The stream is closed on the way out, also when an interrupt propagates."""
    from ocrprune.raster import DocDone, DocFailed, DocOpened, PageRendered

    batch: list[T] = []

    def flush() -> None:
        if batch:
            handler.run_batch(list(batch))
            batch.clear()
        handler.settle()

    with stream:
        for event in stream:
            if isinstance(event, DocOpened):
                handler.opened(event)
            elif isinstance(event, PageRendered):
                item = handler.rendered(event)
                if item is not None:
                    batch.append(item)
                    if len(batch) >= handler.batch_size:
                        flush()
            elif isinstance(event, DocFailed):
                handler.failed(event, batch)
            elif isinstance(event, DocDone):
                handler.done(event)
            handler.settle()
            if handler.stopped():
                break
        if not handler.stopped():
            flush()
