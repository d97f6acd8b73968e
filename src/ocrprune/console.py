"""Everything a person sees while a run goes: logs, progress, all on stderr.

A rich progress bar on a terminal; plain periodic lines when stderr is not a TTY (cron, CI, pipes);
`--log-format json` writes one JSON object per stderr line for log collectors (progress and the
final summary included, no bar). Stdout is never touched.

Guarantees:
- while the bar is live, log records are printed through the bar's own console, so each one
  appears whole, on its own line, above the bar; nothing writes to the terminal behind its back;
- the pages total is marked open (`12/40+`) until the caller says every document has been
  opened (`all_pages_known`), so a partial total never looks like a finished run.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

LOGGER = "ocrprune"
# Keys a record's `extra` may carry that JSON lines show as their own fields.
_EXTRA_KEYS = ("file", "page", "kind", "event")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, message, `extra` keys, and a record's `fields` dict.

    A traceback becomes a `traceback` string field, so even a crash stays one line.
    """

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": round(record.created, 3),
            "level": record.levelname.lower(),
            "message": record.getMessage(),
        }
        for key in _EXTRA_KEYS:
            if hasattr(record, key):
                payload[key] = getattr(record, key)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            payload.update({k: v for k, v in fields.items() if k not in payload})
        if record.exc_info:
            payload["traceback"] = self.formatException(record.exc_info)
        return json.dumps(payload, ensure_ascii=False, default=str)


class ConsoleHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to its stream, or through a live progress bar's console while one is showing.

    It also counts error records, so the CLI can tell whether anything failed in a run that
    had to stop early (stdout closed by its reader).
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self.live: Console | None = None
        self.errors = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            self.errors += 1
        live = self.live
        if live is None:
            super().emit(record)
            return
        try:
            live.print(Text(self.format(record)), soft_wrap=True, highlight=False)
        except Exception:  # noqa: BLE001 - logging must never raise into the run
            self.handleError(record)


def setup_logging(verbosity: int, log_format: str, stream: TextIO | None = None) -> logging.Logger:
    """`verbosity` -1 quiet (warnings and errors: every failure, no progress), 0 normal, 1 debug."""
    logger = logging.getLogger(LOGGER)
    logger.handlers.clear()
    handler = ConsoleHandler(stream or sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("ocrprune: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel({-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG))
    logger.propagate = False
    _capture_warnings(handler if log_format == "json" else None)
    return logger


def _capture_warnings(handler: logging.Handler | None) -> None:
    """With JSON logs, Python warnings from any library become JSON lines too (else: untouched)."""
    logging.captureWarnings(handler is not None)
    warnings_logger = logging.getLogger("py.warnings")
    warnings_logger.handlers.clear()
    if handler is not None:
        warnings_logger.addHandler(handler)
        warnings_logger.propagate = False


def errors_logged() -> int:
    """Error records written since `setup_logging` (0 when logging was never set up)."""
    return sum(
        h.errors for h in logging.getLogger(LOGGER).handlers if isinstance(h, ConsoleHandler)
    )


def _route_logs(stream: TextIO, console: Console | None) -> None:
    """Send our handlers that write to `stream` through `console` (None: straight to the stream)."""
    for handler in logging.getLogger(LOGGER).handlers:
        if isinstance(handler, ConsoleHandler) and handler.stream is stream:
            handler.live = console


def count_label(done: int, total: int, known: bool) -> str:
    """`12/40` when the total is final, `12/40+` while more may still be announced."""
    return f"{done}/{total}" if known else f"{done}/{total}+"


class _CountColumn(ProgressColumn):
    """`done/total`, with `+` on a total that is still growing."""

    def render(self, task: Task) -> Text:
        total = int(task.fields.get("announced", task.total or 0))
        return Text(count_label(int(task.completed), total, bool(task.fields.get("known", True))))


class ProgressView:
    """Progress over documents and pages: a live bar on a TTY, else a line every `every` seconds.

    `bar=False` forces the plain lines (used for `--log-format json`, where every line is JSON).
    """

    def __init__(
        self, enabled: bool, stream: TextIO | None = None, every: float = 10.0, bar: bool = True
    ) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = bar and bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = every
        self.docs_total = 0
        self.docs_done = 0
        self.pages_total = 0
        self.pages_done = 0
        self.pages_final = False
        self.started = time.perf_counter()
        self.last_line = self.started
        self._bar: Progress | None = None
        self._docs_task: Any = None
        self._pages_task: Any = None

    def start(self, documents: int) -> None:
        self.docs_total = documents
        self.started = self.last_line = time.perf_counter()
        if self.enabled and self.tty and self._bar is None:
            console = Console(file=self.stream)
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                _CountColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=False,
                redirect_stdout=False,  # stdout carries data (--stdout); never touch it
                redirect_stderr=self.stream is sys.stderr,
            )
            self._bar.start()
            self._docs_task = self._bar.add_task("documents", total=documents, rate="")
            self._pages_task = self._bar.add_task(
                "pages", total=None, rate="", announced=0, known=False
            )
            _route_logs(self.stream, console)
            self._bar.refresh()

    def pages_known(self, count: int) -> None:
        """`count` more pages were announced (one document opened)."""
        self.pages_total += count
        self._update_pages()

    def all_pages_known(self) -> None:
        """Every document has been opened: the pages total is final from now on."""
        self.pages_final = True
        self._update_pages()

    def _update_pages(self) -> None:
        if self._bar is not None:
            # An open total stays None for rich, so the bar pulses and no ETA is guessed from it.
            total = self.pages_total if self.pages_final else None
            self._bar.update(
                self._pages_task,
                total=total,
                announced=self.pages_total,
                known=self.pages_final,
                refresh=True,
            )

    def pages_finished(self, count: int) -> None:
        self.pages_done += count
        rate = self.pages_done / max(time.perf_counter() - self.started, 1e-9)
        if self._bar is not None:
            self._bar.update(
                self._pages_task, advance=count, rate=f"{rate:.2f} pages/s", refresh=True
            )
        self._maybe_line(rate)

    def document_finished(self) -> None:
        self.docs_done += 1
        if self._bar is not None:
            self._bar.update(self._docs_task, advance=1, refresh=True)

    def _maybe_line(self, rate: float) -> None:
        now = time.perf_counter()
        if not self.enabled or self.tty or now - self.last_line < self.every:
            return
        self.last_line = now
        pages = count_label(self.pages_done, self.pages_total, self.pages_final)
        logging.getLogger(LOGGER).info(
            "progress: %d/%d documents, %s pages, %.2f pages/s",
            self.docs_done,
            self.docs_total,
            pages,
            rate,
            extra={
                "event": "progress",
                "fields": {
                    "documents_done": self.docs_done,
                    "documents_total": self.docs_total,
                    "pages_done": self.pages_done,
                    "pages_total": self.pages_total,
                    "pages_total_final": self.pages_final,
                    "pages_per_s": round(rate, 3),
                },
            },
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
            _route_logs(self.stream, None)
