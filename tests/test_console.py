"""Progress and logs go to stderr: plain periodic lines when not a terminal, JSON on request."""

from __future__ import annotations

import io
import json
import logging

from ocrprune.console import ProgressView, setup_logging


def test_progress_prints_plain_lines_when_not_a_terminal():
    stream = io.StringIO()
    setup_logging(0, "text", stream)
    view = ProgressView(enabled=True, stream=stream, every=0.0)
    view.start(documents=2)
    view.pages_known(3)
    view.pages_finished(3)
    view.document_finished()
    view.close()
    assert "progress: 0/2 documents, 3/3 pages" in stream.getvalue()


def test_json_log_lines_carry_file_and_kind():
    stream = io.StringIO()
    logger = setup_logging(0, "json", stream)
    logger.error("bad.pdf: corrupt: nope", extra={"file": "bad.pdf", "kind": "corrupt"})
    record = json.loads(stream.getvalue())
    assert (record["level"], record["file"], record["kind"]) == ("error", "bad.pdf", "corrupt")


def test_quiet_shows_errors_only():
    stream = io.StringIO()
    logger = setup_logging(-1, "text", stream)
    logger.info("hidden")
    logger.error("shown")
    assert stream.getvalue() == "ocrprune: shown\n"
    logging.getLogger("ocrprune").handlers.clear()
