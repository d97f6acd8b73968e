"""The render process: documents are opened and pages rendered in a child process.

Why a process: a page whose content inflates to hundreds of MB can keep MuPDF busy for minutes,
inside C code that no thread can interrupt; a damaged file can crash the renderer. In a child, a
page over the time limit is stopped by killing the process (it holds nothing worth saving), a
crash costs that page, and Ctrl-C never waits for a render.

* `RenderWorker` (parent side) sends one request at a time and waits for the reply, at most
  `timeout` seconds, checking its stop event every 0.1 s; it raises `WorkerTimeout`,
  `WorkerDied` or `WorkerStopped`. The next request after a kill starts a fresh process, also
  when the process died while idle (OOM killer, an operator): `starts` counts the processes, so
  the caller knows to reopen its document there before asking for a page.
* The child never prints a traceback: a request it cannot serve gets an error reply.
* Pages travel as raw RGB bytes through a shared file mapping (`SharedPixels`); only a small
  header goes through the pipe (no PNG encode, no pickling or piping of megabytes). Where the
  mapping cannot grow (no memory or space left for it), that page's pixels go through the pipe.
* Start method: `forkserver` (a clean server process started once, with the renderers preloaded,
  so a restart costs milliseconds), `spawn` where it is missing; never `fork` (the parent has
  torch threads).
* The child ignores SIGINT (Ctrl-C is the parent's to handle) and, on Linux, is SIGKILLed by the
  kernel when its parent dies. Its parent is the fork server, which exits as soon as the run's
  process is gone (the child lets go of the server's keep-alive pipe), so no orphan keeps
  rendering after the run, even one killed outright.
"""

from __future__ import annotations

import ctypes
import mmap
import multiprocessing
import os
import select
import signal
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from PIL import Image

from ocrprune.errors import InputError
from ocrprune.raster.base import Pixels, RenderedPage, describe

PROCESS_NAME = "ocrprune-render"
START_TIMEOUT = 120.0  # seconds a fresh render process may take to report ready
_POLL = 0.1
_PR_SET_PDEATHSIG = 1


class WorkerTimeout(Exception):
    """The request took longer than its time limit; the process was killed."""


class WorkerDied(Exception):
    """The render process ended while handling a request (a crash, or killed from outside)."""


class WorkerUnavailable(RuntimeError):
    """A render process could not be started at all."""


class WorkerStopped(Exception):
    """The stream is closing; the process was killed."""


class SharedPixels:
    """A file both processes map: the child writes a page's pixels, the parent copies them out.

    One copy each way instead of pushing megabytes through a pipe. The file has no name (a memfd
    on Linux; elsewhere a temporary file unlinked at once) and reaches the child as an inherited
    descriptor, so nothing is ever left behind, whenever either process dies. Only the child grows
    it (page by page, in 8 MiB steps)."""

    STEP = 8 << 20

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._map: mmap.mmap | None = None

    @classmethod
    def create(cls) -> SharedPixels:
        if hasattr(os, "memfd_create"):
            return cls(os.memfd_create("ocrprune-pixels", os.MFD_CLOEXEC))
        fd, path = tempfile.mkstemp(prefix="ocrprune-pixels-")
        os.unlink(path)
        return cls(fd)

    def for_child(self) -> _InheritedFd:
        """What to pass in the render process's arguments: it arrives there as its own fd."""
        return _InheritedFd(self.fd)

    def write(self, data: Any, nbytes: int) -> bool:
        """Child: put `nbytes` of `data` at the start; False if the space cannot be reserved
        (writing into a mapping the file cannot back would kill the process with SIGBUS)."""
        if os.fstat(self.fd).st_size < nbytes:
            size = -(-nbytes // self.STEP) * self.STEP
            try:
                if hasattr(os, "posix_fallocate"):
                    os.posix_fallocate(self.fd, 0, size)
                else:
                    os.ftruncate(self.fd, size)
            except OSError:
                return False
        self._mapped(nbytes)[:nbytes] = data
        return True

    def image(self, size: tuple[int, int], nbytes: int) -> Image.Image:
        """Parent: a copy of the RGB image the child just wrote."""
        with memoryview(self._mapped(nbytes)) as view:
            return Image.frombytes("RGB", size, view[:nbytes])

    def _mapped(self, nbytes: int) -> mmap.mmap:
        if self._map is None or len(self._map) < nbytes:
            if self._map is not None:
                self._map.close()
            self._map = mmap.mmap(self.fd, max(nbytes, os.fstat(self.fd).st_size))
        return self._map

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class _InheritedFd:
    """A descriptor that travels to a child process started by multiprocessing (as Connection
    objects do): pickled while the child starts, duplicated into it, an int once there."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        from multiprocessing import reduction

        return _inherit_fd, (reduction.DupFd(self.fd),)


def _inherit_fd(dup: Any) -> int:
    fd: int = dup.detach()
    return fd


def refuse_inside_worker() -> None:
    """Fail fast when a render process is re-running the main script.

    Like any `spawn`/`forkserver` code, a script using `PageStream` must guard its entry point
    with `if __name__ == "__main__":`; without it, each render process would re-run the script."""
    if multiprocessing.current_process().name == PROCESS_NAME:
        raise RuntimeError(
            "PageStream started inside the render process: guard the main script with "
            "'if __name__ == \"__main__\":'"
        )


def _context() -> Any:
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["ocrprune.raster.open"])
        return ctx
    return multiprocessing.get_context("spawn")


class RenderWorker:
    """A render process driven by one thread; `kill` may be called from any thread."""

    def __init__(self, stop: threading.Event) -> None:
        self._stop = stop
        self._lock = threading.Lock()
        self._proc: Any = None
        self._conn: Connection | None = None
        self._pixels: SharedPixels | None = None
        self.starts = 0  # render processes started so far (each one opens documents anew)

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None else None

    def ready(self) -> int:
        """Make sure a render process runs (starting a fresh one if it died); its `starts`."""
        self._ensure()
        return self.starts

    def call(self, request: tuple[Any, ...], timeout: float | None) -> tuple[Any, ...]:
        """Send `request` and return the reply; kills the process on timeout or stop."""
        conn = self._ensure()
        try:
            conn.send(request)
        except (OSError, ValueError):
            raise self._died() from None
        self._wait(conn, timeout)
        try:
            reply: tuple[Any, ...] = conn.recv()
        except (EOFError, OSError):
            raise self._died() from None
        return reply

    def image(self, size: tuple[int, int], nbytes: int, shared: bool) -> Image.Image:
        """The pixels of the page the last reply announced (shared mapping, or the pipe)."""
        assert self._pixels is not None and self._conn is not None
        if shared:
            return self._pixels.image(size, nbytes)
        try:
            return Image.frombytes("RGB", size, self._conn.recv_bytes())
        except (EOFError, OSError):
            raise self._died() from None

    def kill(self) -> None:
        """Kill the process now (thread-safe; the owning thread notices and cleans up)."""
        with self._lock:
            proc = self._proc
        if proc is not None and proc.pid is not None:
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except OSError:
                pass

    def shutdown(self) -> None:
        """Stop the process and release the pipe (owning thread only)."""
        with self._lock:
            proc, conn, pixels = self._proc, self._conn, self._pixels
            self._proc, self._conn, self._pixels = None, None, None
        if proc is not None and proc.pid is not None:  # started
            if proc.is_alive():
                proc.kill()
            proc.join(5.0)
        if conn is not None:
            conn.close()
        if pixels is not None:
            pixels.close()

    def _running(self) -> bool:
        """Whether the process lives and waits for a request: between requests nothing is
        readable from it, so a readable pipe is the end of file its death left (seen at once,
        before the process is even reaped; and far cheaper than `is_alive`)."""
        conn = self._conn
        if conn is None or self._proc is None:
            return False
        try:
            if not hasattr(select, "poll"):
                return not conn.poll(0)
            poller = select.poll()  # no limit on the descriptor's number, unlike select()
            poller.register(conn.fileno(), select.POLLIN)
            return not poller.poll(0)
        except (OSError, ValueError):
            return False

    def _ensure(self) -> Connection:
        if self._running():
            assert self._conn is not None
            return self._conn
        self.shutdown()
        ctx = _context()
        parent, child = ctx.Pipe(duplex=True)
        pixels = SharedPixels.create()
        proc = ctx.Process(
            target=serve, args=(child, pixels.for_child()), name=PROCESS_NAME, daemon=True
        )
        with self._lock:
            self._proc, self._conn, self._pixels = proc, parent, pixels
        try:
            proc.start()
        except Exception as exc:  # noqa: BLE001 - no process at all: say why, once
            self.shutdown()
            raise WorkerUnavailable(f"cannot start a render process: {describe(exc)}") from None
        finally:
            child.close()
        try:
            self._wait(parent, START_TIMEOUT)
            ready = parent.recv()
        except (WorkerDied, WorkerTimeout, EOFError, OSError) as exc:
            self.shutdown()
            why = str(exc) or "it exited before it was ready"
            raise WorkerUnavailable(f"the render process did not start: {why}") from None
        if ready[0] != "ready":
            self.shutdown()
            raise WorkerUnavailable("the render process did not start")
        self.starts += 1
        return parent

    def _wait(self, conn: Connection, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._stop.is_set():
                self.shutdown()
                raise WorkerStopped()
            step = _POLL
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.shutdown()
                    raise WorkerTimeout()
                step = min(step, left)
            try:
                if conn.poll(step):
                    return
            except (OSError, ValueError):
                raise self._died() from None

    def _died(self) -> Exception:
        proc = self._proc
        code = None
        if proc is not None:
            proc.join(1.0)
            code = proc.exitcode
        self.shutdown()
        if self._stop.is_set():
            return WorkerStopped()
        return WorkerDied(_exit_text(code))


def _exit_text(code: int | None) -> str:
    if code is None:
        return "the render process stopped answering"
    if code < 0:
        try:
            return f"the render process died (killed by {signal.Signals(-code).name})"
        except ValueError:
            return f"the render process died (killed by signal {-code})"
    return f"the render process exited with status {code}"


def page_from_reply(reply: tuple[Any, ...], worker: RenderWorker, display: str) -> RenderedPage:
    """Turn a `page` or `error` reply into a RenderedPage (reading the pixels for `page`)."""
    if reply[0] == "page":
        _, page_no, render_ms, dpi, size, nbytes, shared, said = reply
        image = worker.image(size, nbytes, shared)
        return RenderedPage(page_no, image, render_ms, None, dpi, said)
    _, page_no, render_ms, kind, detail, said = reply
    error = InputError(display, kind, detail, page=page_no)
    return RenderedPage(page_no, None, render_ms, error, warnings=said)


# --- the child ------------------------------------------------------------------------------------


def serve(conn: Connection, pixels_fd: int) -> None:
    """The render process's loop: open / render / probe / close requests until EOF."""
    _release_fork_server()
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from ocrprune.raster.open import open_document  # before "ready": not on the first page's clock

    pixels = SharedPixels(pixels_fd)
    server = _Server(pixels, open_document)
    conn.send(("ready", os.getpid()))
    try:
        while True:
            request = conn.recv()
            if request[0] not in ("open", "render", "probe", "close"):
                return
            try:
                server.handle(conn, request)
            except Exception as exc:  # noqa: BLE001 - an answer, never a traceback
                if request[0] != "close":  # the one request that gets no reply
                    conn.send(_failure_reply(request, describe(exc)))
    except (EOFError, OSError):
        return  # the parent is gone or closed the pipe
    finally:
        server.close()
        pixels.close()


class _Server:
    """The child's state: at most one open document."""

    def __init__(self, pixels: SharedPixels, opener: Any) -> None:
        self.pixels = pixels
        self.opener = opener
        self.opened: Any = None

    def handle(self, conn: Connection, request: tuple[Any, ...]) -> None:
        op = request[0]
        if op in ("open", "close"):
            self.close()
        if op == "open":
            conn.send(self._open(request[1], request[2]))
        elif op == "close":
            return
        elif self.opened is None:  # the parent always opens first; say so rather than crash
            conn.send(_failure_reply(request, "the render process has no document open"))
        elif op == "render":
            _send_page(conn, self.opened.render_pixels(request[1]), self.pixels)
        else:
            conn.send(("probed", self.opened.probe(request[1])))

    def _open(self, doc: Any, cfg: Any) -> tuple[Any, ...]:
        try:
            self.opened = opened = self.opener(doc, cfg)
        except InputError as exc:
            return ("failed", exc.kind, exc.detail)
        except Exception as exc:  # noqa: BLE001 - reported as the document's failure
            return ("failed", "internal", describe(exc))
        trailing = opened.trailing_error
        return (
            "opened",
            tuple(opened.page_numbers),
            opened.claimed_pages,
            opened.readable_pages,
            None if trailing is None else (trailing.kind, trailing.detail),
            tuple(opened.open_warnings),
        )

    def close(self) -> None:
        if self.opened is not None:
            opened, self.opened = self.opened, None
            opened.close()


def _failure_reply(request: tuple[Any, ...], detail: str) -> tuple[Any, ...]:
    """The reply a request gets when serving it failed unexpectedly."""
    op = request[0]
    if op == "render":
        return ("error", request[1], 0.0, "internal", detail, ())
    if op == "probe":
        return ("probed", detail)
    return ("failed", "internal", detail)


def _send_page(conn: Connection, page: RenderedPage | Pixels, pixels: SharedPixels) -> None:
    if isinstance(page, RenderedPage):
        error = page.error
        kind, detail = (
            (error.kind, error.detail) if error is not None else ("render_error", "no image")
        )
        conn.send(("error", page.page, page.render_ms, kind, detail, page.warnings))
        return
    nbytes = page.size[0] * page.size[1] * 3
    shared = pixels.write(page.data, nbytes)
    reply = ("page", page.page, page.render_ms, page.dpi, page.size, nbytes, shared, page.warnings)
    conn.send(reply)
    if not shared:
        conn.send_bytes(page.data)


def _release_fork_server() -> None:
    """Drop the fork server's keep-alive pipe, which its children inherit.

    The server exits when no process holds that pipe's write end any more; without this, the
    render process would keep it alive after the run is gone, and so outlive the run itself."""
    try:
        from multiprocessing import forkserver

        server: Any = forkserver._forkserver
        fd = server._forkserver_alive_fd
    except (ImportError, AttributeError):
        return
    if isinstance(fd, int):
        try:
            os.close(fd)
        except OSError:
            pass
        server._forkserver_alive_fd = None


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies; elsewhere, nothing."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)
