"""Rendering never hangs or sinks a batch: time limit, signals, salvage, hostile names and files.

Every file is built here, in code; the slow page is a 3 KB PDF whose content nests one form
XObject ten times per level, six levels deep (a million strokes: MuPDF needs tens of seconds for
it at 144 dpi, PDFium several).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path, PurePosixPath

import pytest
from docgen import build_pdf, make_lying_pdf, make_pdf, make_slow_pdf
from PIL import Image

from ocrprune.config import RasterConfig
from ocrprune.errors import InputError
from ocrprune.inputs import Document
from ocrprune.raster import (
    DocDone,
    DocFailed,
    DocOpened,
    OpenedDocument,
    PageRendered,
    PageStream,
    StreamEvent,
    open_document,
)

SRC = Path(__file__).resolve().parents[2] / "src"


# --- PDFs built byte by byte ----------------------------------------------------------------------


def doc_at(path: Path, kind: str = "pdf", display: str | None = None) -> Document:
    return Document(path, display or os.path.basename(path), PurePosixPath("out"), kind)  # type: ignore[arg-type]


def summary(events: list[StreamEvent]) -> list[tuple[object, ...]]:
    """(event, page, image size or error text) per event."""
    rows: list[tuple[object, ...]] = []
    for ev in events:
        if isinstance(ev, PageRendered):
            page = ev.page
            rows.append(("page", page.page, page.image.size if page.image else str(page.error)))
        elif isinstance(ev, DocFailed):
            rows.append(("failed", str(ev.error)))
        elif isinstance(ev, DocOpened):
            rows.append(("opened", len(ev.page_numbers)))
        else:
            rows.append(("done",))
    return rows


def renderers() -> list[str]:
    try:
        import pypdfium2  # noqa: F401
    except ImportError:
        return ["mupdf"]
    return ["mupdf", "pdfium"]


# --- 1. the render time limit ---------------------------------------------------------------------


@pytest.mark.parametrize("renderer", renderers())
def test_a_page_over_the_time_limit_is_render_error_and_the_next_page_renders(
    tmp_path: Path, renderer: str
) -> None:
    path = make_slow_pdf(tmp_path / "slow.pdf")
    cfg = RasterConfig(dpi=144, render_timeout=0.5, renderer=renderer)
    started = time.monotonic()
    pids: list[int | None] = []
    with PageStream([doc_at(path)], cfg) as stream:
        events = []
        for ev in stream:
            events.append(ev)
            pids.append(stream.render_pid)
    elapsed = time.monotonic() - started
    rows = summary(events)
    assert [r[:2] for r in rows] == [("opened", 2), ("page", 1), ("page", 2), ("done",)]
    error = events[1].page.error  # type: ignore[union-attr]
    assert error is not None and (error.kind, error.page) == ("render_error", 1)
    assert str(error).startswith(
        "slow.pdf page 1: render_error: exceeded the render time limit of 0.5 s (stopped after"
    )
    assert rows[2] == ("page", 2, (400, 600))
    assert pids[0] != pids[2]  # the stuck process was killed and a fresh one rendered page 2
    # Rendering page 1 to the end takes MuPDF tens of seconds and PDFium several.
    assert elapsed < 6.0


def test_without_a_time_limit_the_slow_page_renders(tmp_path: Path) -> None:
    path = make_slow_pdf(tmp_path / "slower.pdf", depth=4)  # 10**4 strokes: fast enough to wait for
    cfg = RasterConfig(dpi=72, render_timeout=None)
    rows = summary(list(PageStream([doc_at(path)], cfg)))
    assert rows == [("opened", 2), ("page", 1, (200, 300)), ("page", 2, (200, 300)), ("done",)]


DRIVER = textwrap.dedent(
    """
    import signal, sys
    from pathlib import Path, PurePosixPath
    from ocrprune.config import RasterConfig
    from ocrprune.inputs import Document
    from ocrprune.raster import DocOpened, PageStream

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if __name__ == "__main__":
        path, how = Path(sys.argv[1]), sys.argv[2]
        if how == "handled":
            signal.signal(signal.SIGTERM, interrupt)
        doc = Document(path, path.name, PurePosixPath("slow"), "pdf")
        stream = PageStream([doc], RasterConfig(render_timeout=None))
        try:
            with stream:
                for event in stream:
                    if isinstance(event, DocOpened):  # the worker is now on the slow page 1
                        print("rendering", stream.render_pid, flush=True)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.exit(130)
        print("finished", flush=True)
    """
)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and PR_SET_PDEATHSIG")
@pytest.mark.parametrize(
    ("sig", "how", "code"),
    [
        (signal.SIGINT, "default", 130),  # Ctrl-C: KeyboardInterrupt, the stream closes
        (signal.SIGTERM, "handled", 130),  # a SIGTERM handler that raises KeyboardInterrupt
        (signal.SIGTERM, "default", -signal.SIGTERM),  # killed outright: the worker must not linger
    ],
)
def test_a_signal_during_a_slow_render_ends_the_run_and_its_render_process(
    tmp_path: Path, sig: int, how: str, code: int
) -> None:
    path = make_slow_pdf(tmp_path / "slow.pdf")
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(
        [sys.executable, str(script), str(path), how],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().split()
        assert first[0] == "rendering"
        worker = int(first[1])
        time.sleep(0.3)
        assert _alive(worker)
        sent = time.monotonic()
        proc.send_signal(sig)
        returncode = proc.wait(timeout=30)
        took = time.monotonic() - sent
        rest = proc.stdout.read()
    finally:
        proc.kill()
        proc.wait()
    assert returncode == code
    assert rest == ("interrupted\n" if code == 130 else "")
    deadline = time.monotonic() + 5
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(worker)
    # The render of page 1 alone takes tens of seconds: the run did not wait for it.
    assert took < 5.0


# --- 2. salvage -----------------------------------------------------------------------------------


def test_a_page_count_far_above_the_page_tree_ends_after_the_real_pages(tmp_path: Path) -> None:
    path = make_lying_pdf(tmp_path / "lies.pdf", claimed=100_000)
    started = time.monotonic()
    rows = summary(list(PageStream([doc_at(path)], RasterConfig(dpi=72))))
    assert rows == [
        ("opened", 100_000),
        ("page", 1, (200, 300)),
        ("page", 2, (200, 300)),
        ("page", 3, (200, 300)),
        (
            "failed",
            "lies.pdf: render_error: pages 4-100000 are not in the PDF's page tree "
            "(it claims 100000 pages and holds 3)",
        ),
    ]
    assert time.monotonic() - started < 10.0


def test_a_slightly_short_page_tree_marks_each_missing_page(tmp_path: Path) -> None:
    path = make_lying_pdf(tmp_path / "short.pdf", claimed=5)
    rows = summary(list(PageStream([doc_at(path)], RasterConfig(dpi=72))))
    assert rows == [
        ("opened", 5),
        ("page", 1, (200, 300)),
        ("page", 2, (200, 300)),
        ("page", 3, (200, 300)),
        ("page", 4, "short.pdf page 4: render_error: ValueError: page not in document"),
        ("page", 5, "short.pdf page 5: render_error: ValueError: page not in document"),
        ("done",),
    ]


def test_a_page_tree_without_pages_that_claims_some_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "hollow.pdf"
    path.write_bytes(
        build_pdf([b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [] /Count 99 >>"])
    )
    with pytest.raises(InputError) as info:
        open_document(doc_at(path), RasterConfig(dpi=72))
    assert str(info.value) == "hollow.pdf: corrupt: the page tree claims 99 pages but holds none"


class _Scripted(OpenedDocument):
    """Pages in `bad` fail with "page N is gone"; probing answers the same for them."""

    def __init__(self, doc: Document, pages: int, bad: set[int]) -> None:
        self.bad = bad
        self.rendered: list[int] = []
        self.probed: list[int] = []
        super().__init__(doc, RasterConfig(dpi=72), pages)

    def _render(self, page_no: int) -> tuple[Image.Image, float]:
        self.rendered.append(page_no)
        if page_no in self.bad:
            raise LookupError(f"page {page_no} is gone")
        return Image.new("RGB", (4, 4), "white"), 72.0

    def probe(self, page_no: int) -> str | None:
        self.probed.append(page_no)
        return f"LookupError: page {page_no} is gone" if page_no in self.bad else None


def test_identical_failures_that_sampled_later_pages_share_end_the_document(
    tmp_path: Path,
) -> None:
    made: list[_Scripted] = []

    def opener(doc: Document, cfg: RasterConfig) -> OpenedDocument:
        made.append(_Scripted(doc, 1000, set(range(3, 1001))))
        return made[0]

    rows = summary(list(PageStream([doc_at(tmp_path / "x.pdf")], RasterConfig(), opener=opener)))
    assert rows[:5] == [
        ("opened", 1000),
        ("page", 1, (4, 4)),
        ("page", 2, (4, 4)),
        ("page", 3, "x.pdf page 3: render_error: LookupError: page 3 is gone"),
        ("page", 4, "x.pdf page 4: render_error: LookupError: page 4 is gone"),
    ]
    assert rows[5:] == [
        ("page", 5, "x.pdf page 5: render_error: LookupError: page 5 is gone"),
        (
            "failed",
            "x.pdf: render_error: pages 6-1000 were not rendered: they cannot be loaded, like "
            "the 3 pages before them (LookupError: page 3 is gone)",
        ),
    ]
    assert made[0].rendered == [1, 2, 3, 4, 5]
    assert made[0].probed == [6, 130, 254, 379, 503, 627, 752, 876, 1000]


def test_identical_failures_do_not_end_a_document_whose_later_pages_load(tmp_path: Path) -> None:
    def opener(doc: Document, cfg: RasterConfig) -> OpenedDocument:
        return _Scripted(doc, 12, {3, 4, 5, 6})

    rows = summary(list(PageStream([doc_at(tmp_path / "y.pdf")], RasterConfig(), opener=opener)))
    assert [r[1] for r in rows[1:-1]] == list(range(1, 13))
    assert [r[1] for r in rows if r[0] == "page" and isinstance(r[2], str)] == [3, 4, 5, 6]
    assert rows[-1] == ("done",)


def test_every_frame_of_an_animated_png_is_a_page(tmp_path: Path) -> None:
    path = tmp_path / "anim.png"
    frames = [Image.new("RGB", (16, 8), (40 * (i + 1), 0, 0)) for i in range(3)]
    frames[0].save(path, format="PNG", save_all=True, append_images=frames[1:], duration=100)
    with open_document(doc_at(path, "image"), RasterConfig(dpi=72)) as opened:
        pages = [opened.render(n) for n in opened.page_numbers]
    assert [(p.page, p.image.getpixel((0, 0))) for p in pages] == [  # type: ignore[union-attr]
        (1, (40, 0, 0)),
        (2, (80, 0, 0)),
        (3, (120, 0, 0)),
    ]


def test_a_still_png_is_one_page(tmp_path: Path) -> None:
    path = tmp_path / "still.png"
    Image.new("RGB", (16, 8), "white").save(path, format="PNG")
    with open_document(doc_at(path, "image"), RasterConfig(dpi=72)) as opened:
        assert opened.page_numbers == [1]


# --- 3. names are bytes ---------------------------------------------------------------------------


def test_files_whose_names_are_not_utf8_open_and_render(tmp_path: Path) -> None:
    folder = os.fsencode(tmp_path)
    pdf_name = folder + b"/caf\xe9.pdf"  # Latin-1, as old archives have them
    png_name = folder + b"/\xff\xfe scan.png"
    with open(pdf_name, "wb") as fh:
        fh.write(make_pdf(tmp_path / "plain.pdf", 2, size=(72, 144)).read_bytes())
    with open(png_name, "wb") as fh:
        Image.new("RGB", (30, 20), (9, 9, 9)).save(fh, format="PNG")
    docs = [doc_at(Path(os.fsdecode(pdf_name))), doc_at(Path(os.fsdecode(png_name)), "image")]
    assert docs[0].display == "caf\udce9.pdf"
    rows = summary(list(PageStream(docs, RasterConfig(dpi=72))))
    assert rows == [
        ("opened", 2),
        ("page", 1, (72, 144)),
        ("page", 2, (72, 144)),
        ("done",),
        ("opened", 1),
        ("page", 1, (30, 20)),
        ("done",),
    ]
    with open_document(docs[0], RasterConfig(dpi=72)) as opened:  # and in this process
        assert opened.render(1).image.size == (72, 144)  # type: ignore[union-attr]


# --- 4. inputs that change under the batch --------------------------------------------------------


def test_inputs_replaced_after_listing_are_named_failures_without_reading_them(
    tmp_path: Path,
) -> None:
    names = ["fifo.pdf", "gone.pdf", "folder.pdf", "sock.pdf", "ok.pdf"]
    short = Path(tempfile.mkdtemp(prefix="ocrp-", dir="/tmp"))  # a socket path must be short
    try:
        paths = [make_pdf(short / name) for name in names]
        docs = [doc_at(p) for p in paths]  # listed while they were all regular PDFs
        os.remove(paths[0])
        os.mkfifo(paths[0])  # opening a FIFO for reading would block forever
        os.remove(paths[1])
        os.remove(paths[2])
        os.mkdir(paths[2])
        os.remove(paths[3])
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(paths[3]))
        try:
            started = time.monotonic()
            rows = summary(list(PageStream(docs, RasterConfig(dpi=18, render_timeout=20))))
        finally:
            server.close()
    finally:
        for p in paths:
            if p.is_dir() and not p.is_symlink():
                p.rmdir()
            elif os.path.lexists(p):
                p.unlink()
        short.rmdir()
    assert rows == [
        ("failed", "fifo.pdf: not_a_document: not a regular file"),
        ("failed", "gone.pdf: missing: the file no longer exists"),
        ("failed", "folder.pdf: not_a_document: not a regular file"),
        ("failed", "sock.pdf: not_a_document: not a regular file"),
        ("opened", 1),
        ("page", 1, (149, 211)),
        ("done",),
    ]
    assert time.monotonic() - started < 15.0


def test_a_file_emptied_after_listing_is_empty(tmp_path: Path) -> None:
    path = make_pdf(tmp_path / "later-empty.pdf")
    doc = doc_at(path)
    path.write_bytes(b"")
    with pytest.raises(InputError) as info:
        open_document(doc, RasterConfig(dpi=18))
    assert str(info.value) == "later-empty.pdf: empty: the file is empty (0 bytes)"


def test_events_reach_the_consumer_in_order_across_documents(tmp_path: Path) -> None:
    docs = [doc_at(make_pdf(tmp_path / f"d{i}.pdf", i + 1, size=(36, 36))) for i in range(3)]
    events = list(PageStream(docs, RasterConfig(dpi=72)))
    assert [(type(e).__name__, e.index) for e in events if not isinstance(e, PageRendered)] == [
        ("DocOpened", 0),
        ("DocDone", 0),
        ("DocOpened", 1),
        ("DocDone", 1),
        ("DocOpened", 2),
        ("DocDone", 2),
    ]
    assert [(e.index, e.page.page) for e in events if isinstance(e, PageRendered)] == [
        (0, 1),
        (1, 1),
        (1, 2),
        (2, 1),
        (2, 2),
        (2, 3),
    ]
    assert all(isinstance(e, (DocOpened, PageRendered, DocDone)) for e in events)


def test_a_render_process_that_dies_costs_only_its_page(tmp_path: Path) -> None:
    path = make_slow_pdf(tmp_path / "crash.pdf")
    rows: list[tuple[object, ...]] = []
    with PageStream([doc_at(path)], RasterConfig(dpi=144, render_timeout=None)) as stream:
        for ev in stream:
            if isinstance(ev, DocOpened):  # the render process is on the slow page 1: crash it
                pid = stream.render_pid
                assert pid is not None
                time.sleep(0.2)
                os.kill(pid, signal.SIGKILL)
            rows.extend(summary([ev]))
    assert rows == [
        ("opened", 2),
        (
            "page",
            1,
            "crash.pdf page 1: render_error: the render process died (killed by SIGKILL) "
            "while rendering this page",
        ),
        ("page", 2, (400, 600)),
        ("done",),
    ]


def test_without_a_render_process_pages_render_in_this_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import multiprocessing

    import ocrprune.raster.worker as worker

    class NoProcesses:
        def __init__(self) -> None:
            self.real = multiprocessing.get_context("spawn")

        def Pipe(self, duplex: bool = True):  # type: ignore[no-untyped-def]  # noqa: N802
            return self.real.Pipe(duplex=duplex)

        def Process(self, **kwargs: object) -> object:  # noqa: N802
            class Refused:
                pid = None

                def start(self) -> None:
                    raise OSError(11, "Resource temporarily unavailable")

                def is_alive(self) -> bool:
                    return False

            return Refused()

    monkeypatch.setattr(worker, "_context", NoProcesses)
    path = make_pdf(tmp_path / "two.pdf", 2, size=(36, 36))
    rows = summary(list(PageStream([doc_at(path)], RasterConfig(dpi=72))))
    assert rows == [("opened", 2), ("page", 1, (36, 36)), ("page", 2, (36, 36)), ("done",)]
    assert [r.getMessage() for r in caplog.records] == [
        "cannot start a render process: BlockingIOError: [Errno 11] Resource temporarily "
        "unavailable; rendering in this process, without a render time limit"
    ]


def test_pixels_cross_by_the_shared_mapping_or_else_the_pipe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import multiprocessing
    import threading

    from ocrprune.raster.base import Pixels
    from ocrprune.raster.worker import RenderWorker, SharedPixels, _send_page, page_from_reply

    image = Image.frombytes("RGB", (3, 2), bytes(range(0, 36, 2)))
    pixels = Pixels(7, (3, 2), image.tobytes(), 144.0, render_ms=5.0)
    parent, child = multiprocessing.Pipe()
    worker = RenderWorker(threading.Event())
    shared = SharedPixels.create()
    worker._conn, worker._pixels = parent, shared  # the parent's side of a running worker
    try:
        _send_page(child, pixels, shared)
        first = parent.recv()
        assert first == ("page", 7, 5.0, 144.0, (3, 2), 18, True, ())
        assert page_from_reply(first, worker, "x").image.tobytes() == image.tobytes()  # type: ignore[union-attr]

        def no_space(fd: int, offset: int, length: int) -> None:
            raise OSError(28, "No space left on device")

        full = SharedPixels.create()  # a fresh, empty file that cannot grow
        monkeypatch.setattr(os, "posix_fallocate", no_space)
        _send_page(child, pixels, full)
        second = parent.recv()
        assert second == ("page", 7, 5.0, 144.0, (3, 2), 18, False, ())
        page = page_from_reply(second, worker, "x")
        assert page.image.tobytes() == image.tobytes()  # type: ignore[union-attr]
        full.close()
    finally:
        worker.shutdown()
        child.close()


def test_a_page_count_above_the_cap_is_not_believed(tmp_path: Path) -> None:
    path = make_lying_pdf(tmp_path / "huge-claim.pdf", claimed=2_500_000)
    events = list(PageStream([doc_at(path)], RasterConfig(dpi=72)))
    assert summary(events)[-1] == (
        "failed",
        "huge-claim.pdf: render_error: pages 4-100000 are not in the PDF's page tree "
        "(it claims 2500000 pages and holds 3)",
    )
    assert isinstance(events[0], DocOpened) and events[0].page_numbers[-1] == 100_000


def test_a_real_document_longer_than_the_cap_reads_the_cap_and_says_so(tmp_path: Path) -> None:
    class Long(OpenedDocument):
        def _render(self, page_no: int) -> tuple[Image.Image, float]:
            return Image.new("RGB", (1, 1), "white"), 72.0

    def opener(doc: Document, cfg: RasterConfig) -> OpenedDocument:
        return Long(doc, cfg, 100_002)

    cfg = RasterConfig(dpi=72, pages=((99_999, 200_000),))
    rows = summary(list(PageStream([doc_at(tmp_path / "long.pdf")], cfg, opener=opener)))
    assert rows == [
        ("opened", 2),
        ("page", 99_999, (1, 1)),
        ("page", 100_000, (1, 1)),
        (
            "failed",
            "long.pdf: too_large: the document claims 100002 pages; "
            "only the first 100000 were read",
        ),
    ]
