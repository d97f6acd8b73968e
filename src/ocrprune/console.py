"""Everything a person sees while a run goes: logs, progress, all on stderr.

A rich progress bar on a terminal; plain periodic lines when stderr is not a TTY (cron, CI, pipes);
`--log-format json` writes one JSON object per log line for log collectors. Stdout is never touched.
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
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

LOGGER = "ocrprune"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, message, and any `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": round(record.created, 3),
            "level": record.levelname.lower(),
            "message": record.getMessage(),
        }
        for key in ("file", "page", "kind", "event"):
            if hasattr(record, key):
                payload[key] = getattr(record, key)
        return json.dumps(payload, ensure_ascii=False)


def setup_logging(verbosity: int, log_format: str, stream: TextIO | None = None) -> logging.Logger:
    """`verbosity` -1 quiet (errors only), 0 normal, 1 verbose (debug)."""
    logger = logging.getLogger(LOGGER)
    logger.handlers.clear()
    handler = logging.StreamHandler(stream or sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("ocrprune: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel({-1: logging.ERROR, 0: logging.INFO}.get(verbosity, logging.DEBUG))
    logger.propagate = False
    return logger


class ProgressView:
    """Progress over documents and pages: a live bar on a TTY, else a line every `every` seconds."""

    def __init__(self, enabled: bool, stream: TextIO | None = None, every: float = 10.0) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = every
        self.docs_total = 0
        self.docs_done = 0
        self.pages_total = 0
        self.pages_done = 0
        self.started = time.perf_counter()
        self.last_line = self.started
        self._bar: Progress | None = None
        self._docs_task: Any = None
        self._pages_task: Any = None

    def start(self, documents: int) -> None:
        self.docs_total = documents
        self.started = self.last_line = time.perf_counter()
        if self.enabled and self.tty:
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
                transient=False,
            )
            self._bar.start()
            self._docs_task = self._bar.add_task("documents", total=documents, rate="")
            self._pages_task = self._bar.add_task("pages", total=None, rate="")

    def pages_known(self, count: int) -> None:
        self.pages_total += count
        if self._bar is not None:
            self._bar.update(self._pages_task, total=self.pages_total)

    def all_pages_known(self) -> None:  # TEMP until cli merge
        pass

    def pages_finished(self, count: int) -> None:
        self.pages_done += count
        rate = self.pages_done / max(time.perf_counter() - self.started, 1e-9)
        if self._bar is not None:
            self._bar.update(self._pages_task, advance=count, rate=f"{rate:.2f} pages/s")
        self._maybe_line(rate)

    def document_finished(self) -> None:
        self.docs_done += 1
        if self._bar is not None:
            self._bar.update(self._docs_task, advance=1)

    def _maybe_line(self, rate: float) -> None:
        now = time.perf_counter()
        if not self.enabled or self.tty or now - self.last_line < self.every:
            return
        self.last_line = now
        logging.getLogger(LOGGER).info(
            "progress: %d/%d documents, %d/%d pages, %.2f pages/s",
            self.docs_done, self.docs_total, self.pages_done, self.pages_total, rate,
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
