"""`run.driver.drive`, the one stream -> batch -> backend loop of `convert` and `sweep`: events reach
the handler in order, queued pages run in batches of `batch_size` (the last one partial), and a
stop leaves the queued batch unrun. A scripted stream; no rendering, no model."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from ocrprune.errors import InputError
from ocrprune.inputs import Document
from ocrprune.raster import DocDone, DocFailed, DocOpened, PageRendered, RenderedPage
from ocrprune.run.driver import StreamHandler, drive

DOC = Document(path=Path("/a.pdf"), display="a.pdf", rel=PurePosixPath("a.pdf"), kind="pdf")


class Script:
    """A stand-in for `PageStream`: its events, and whether it was closed."""

    def __init__(self, events: list[object]) -> None:
        self.events, self.closed = events, False

    def __enter__(self) -> "Script":
        return self

    def __exit__(self, *exc: object) -> None:
        self.closed = True

    def __iter__(self):
        return iter(self.events)


class Recorder(StreamHandler[int]):
    def __init__(self, size: int, stop_after_batches: int | None = None) -> None:
        self.size, self.stop_after = size, stop_after_batches
        self.seen: list[str] = []
        self.batches: list[list[int]] = []

    @property
    def batch_size(self) -> int:
        return self.size

    def opened(self, event: DocOpened) -> None:
        self.seen.append(f"opened {event.index}")

    def rendered(self, event: PageRendered) -> int | None:
        return None if event.page.image is None else event.page.page

    def failed(self, event: DocFailed, queued) -> None:
        self.seen.append(f"failed {event.index} queued {list(queued)}")

    def done(self, event: DocDone) -> None:
        self.seen.append(f"done {event.index}")

    def run_batch(self, items: list[int]) -> None:
        self.batches.append(items)

    def stopped(self) -> bool:
        return self.stop_after is not None and len(self.batches) >= self.stop_after


def page(n: int, image: object = "img") -> PageRendered:
    return PageRendered(0, DOC, RenderedPage(page=n, image=image, render_ms=0.0))  # type: ignore[arg-type]


def test_pages_run_in_batches_and_the_last_partial_batch_runs_at_the_end() -> None:
    stream = Script([DocOpened(0, DOC, (1, 2, 3, 4, 5)), page(1), page(2), page(3, None), page(4), page(5), DocDone(0, DOC)])
    handler = Recorder(size=2)
    drive(stream, handler)  # type: ignore[arg-type]
    assert handler.batches == [[1, 2], [4, 5]]
    assert handler.seen == ["opened 0", "done 0"] and stream.closed


def test_a_failed_document_sees_the_batch_not_yet_run() -> None:
    error = InputError("a.pdf", "render_error", "broken")
    stream = Script([DocOpened(0, DOC, (1, 2, 3)), page(1), DocFailed(0, DOC, error)])
    handler = Recorder(size=4)
    drive(stream, handler)  # type: ignore[arg-type]
    assert handler.seen == ["opened 0", "failed 0 queued [1]"]
    assert handler.batches == [[1]]


def test_a_stop_leaves_the_queued_batch_unrun_and_closes_the_stream() -> None:
    stream = Script([page(1), page(2), page(3), page(4)])
    handler = Recorder(size=2, stop_after_batches=1)
    drive(stream, handler)  # type: ignore[arg-type]
    assert handler.batches == [[1, 2]] and stream.closed
