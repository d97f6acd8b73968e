"""Progress and logs go to stderr: plain periodic lines when not a terminal, JSON on request, and on
a terminal log lines printed above the live bar, never into it."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
import warnings

import pytest

from ocrprune.console import ProgressView, count_label, errors_logged, setup_logging


@pytest.fixture(autouse=True)
def _no_handlers_left():
    yield
    logging.getLogger("ocrprune").handlers.clear()
    setup_logging(0, "text", io.StringIO())  # releases Python warnings if a test captured them
    logging.getLogger("ocrprune").handlers.clear()


class FakeTerminal(io.StringIO):
    """A StringIO that says it is a terminal, so rich draws a live bar into it."""

    def isatty(self) -> bool:
        return True


_CSI = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])")


def screen(text: str) -> list[str]:
    """What a terminal shows after `text`: handles \\r, \\n, erase-line and cursor-up;
    colours are dropped."""
    rows: list[list[str]] = [[]]
    row = col = 0
    i = 0
    while i < len(text):
        match = _CSI.match(text, i)
        if match:
            args, verb = match.groups()
            if verb == "K":  # erase the line
                rows[row] = []
            elif verb == "A":  # cursor up
                row = max(0, row - int(args or 1))
                col = min(col, len(rows[row]))
            i = match.end()
            continue
        char = text[i]
        i += 1
        if char == "\r":
            col = 0
        elif char == "\n":
            row += 1
            col = 0
            if row == len(rows):
                rows.append([])
        else:
            line = rows[row]
            line[col : col + 1] = [char]
            col += 1
    return ["".join(r).rstrip() for r in rows if "".join(r).strip()]


def test_progress_prints_plain_lines_when_not_a_terminal():
    stream = io.StringIO()
    setup_logging(0, "text", stream)
    view = ProgressView(enabled=True, stream=stream, every=0.0)
    view.start(documents=2)
    view.pages_known(3)
    view.pages_finished(3)
    view.document_finished()
    view.close()
    assert "progress: 0/2 documents, 3/3+ pages" in stream.getvalue()


def test_plain_lines_mark_the_pages_total_open_until_all_pages_are_known():
    stream = io.StringIO()
    setup_logging(0, "text", stream)
    view = ProgressView(enabled=True, stream=stream, every=0.0)
    view.start(documents=2)
    view.pages_known(40)
    view.pages_finished(12)
    view.pages_known(8)
    view.all_pages_known()
    view.pages_finished(1)
    view.close()
    lines = [line.split(", ")[1] for line in stream.getvalue().splitlines()]
    assert lines == ["12/40+ pages", "13/48 pages"]


def test_count_label_marks_open_totals():
    assert (count_label(12, 40, False), count_label(12, 40, True)) == ("12/40+", "12/40")


def test_json_log_lines_carry_file_and_kind():
    stream = io.StringIO()
    logger = setup_logging(0, "json", stream)
    logger.error("bad.pdf: corrupt: nope", extra={"file": "bad.pdf", "kind": "corrupt"})
    record = json.loads(stream.getvalue())
    assert (record["level"], record["file"], record["kind"]) == ("error", "bad.pdf", "corrupt")


def test_json_lines_merge_fields_and_keep_a_traceback_on_one_line():
    stream = io.StringIO()
    logger = setup_logging(0, "json", stream)
    logger.info(
        "summary", extra={"event": "summary", "fields": {"exit_code": 3, "message": "not this"}}
    )
    try:
        raise ValueError("boom")
    except ValueError:
        logger.error("internal error", exc_info=True)
    first, second = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert (first["event"], first["exit_code"], first["message"]) == ("summary", 3, "summary")
    assert second["message"] == "internal error"
    assert second["traceback"].startswith("Traceback") and second["traceback"].endswith(
        "ValueError: boom"
    )


def test_json_logs_turn_python_warnings_into_json_lines():
    stream = io.StringIO()
    setup_logging(0, "json", stream)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("old API", DeprecationWarning, stacklevel=1)
    record = json.loads(stream.getvalue())
    assert record["level"] == "warning"
    assert "DeprecationWarning: old API" in record["message"]


def test_json_progress_lines_are_json_even_on_a_terminal():
    stream = FakeTerminal()
    setup_logging(0, "json", stream)
    view = ProgressView(enabled=True, stream=stream, every=0.0, bar=False)
    view.start(documents=1)
    view.pages_known(2)
    view.pages_finished(1)
    view.close()
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(records) == 1
    fields = {
        k: records[0][k]
        for k in ("event", "documents_done", "documents_total", "pages_done", "pages_total")
    }
    assert fields == {
        "event": "progress",
        "documents_done": 0,
        "documents_total": 1,
        "pages_done": 1,
        "pages_total": 2,
    }
    assert records[0]["pages_total_final"] is False


def test_quiet_shows_errors_only():
    stream = io.StringIO()
    logger = setup_logging(-1, "text", stream)
    logger.info("hidden")
    logger.error("shown")
    assert stream.getvalue() == "ocrprune: shown\n"


def test_quiet_still_shows_warnings_such_as_failed_pages():
    stream = io.StringIO()
    logger = setup_logging(-1, "text", stream)
    logger.warning("a.pdf page 2: length")
    logger.info("skipped 3 document(s)")
    assert stream.getvalue() == "ocrprune: a.pdf page 2: length\n"


def test_errors_are_counted_for_the_exit_code_of_a_stopped_run():
    logger = setup_logging(0, "text", io.StringIO())
    logger.warning("not an error")
    logger.error("one")
    logger.error("two")
    assert errors_logged() == 2
    setup_logging(0, "text", io.StringIO())
    assert errors_logged() == 0


def test_log_lines_appear_whole_above_the_live_bar():
    stream = FakeTerminal()
    setup_logging(0, "text", stream)
    logger = logging.getLogger("ocrprune")
    view = ProgressView(enabled=True, stream=stream)
    view.start(documents=3)
    long_message = "b.pdf page 7: render_error: " + "x" * 150  # longer than the terminal is wide
    messages = ["a.pdf: opened", long_message, "c.pdf: corrupt: no trailer"]
    view.pages_known(4)
    logger.info(messages[0])
    view.pages_finished(2)
    logger.warning(messages[1])
    view.document_finished()
    view.pages_known(5)
    logger.error(messages[2])
    view.pages_finished(1)
    view.close()
    lines = screen(stream.getvalue())
    for message in messages:
        assert lines.count(f"ocrprune: {message}") == 1, lines
    assert [line.startswith("ocrprune: ") for line in lines] == [True, True, True, False, False]
    assert lines[3].startswith("documents") and lines[4].startswith("pages")


def test_a_raw_write_behind_the_bar_would_be_cut():
    """The check above can fail: a line written straight to the stream lands in the bar's line."""
    stream = FakeTerminal()
    view = ProgressView(enabled=True, stream=stream)
    view.start(documents=1)
    view.pages_known(1)
    stream.write("ocrprune: raw\n")
    view.pages_finished(1)
    view.close()
    assert "ocrprune: raw" not in screen(stream.getvalue())


def test_the_bar_shows_an_open_pages_total_until_all_pages_are_known():
    stream = FakeTerminal()
    view = ProgressView(enabled=True, stream=stream)
    view.start(documents=2)
    view.pages_known(40)
    view.pages_finished(12)
    open_pages = [line for line in screen(stream.getvalue()) if line.startswith("pages")]
    view.pages_known(8)
    view.all_pages_known()
    view.pages_finished(1)
    view.close()
    final_pages = [line for line in screen(stream.getvalue()) if line.startswith("pages")]
    assert " 12/40+ " in open_pages[-1]
    assert " 13/48 " in final_pages[-1]


def test_the_bar_leaves_stdout_alone_and_releases_the_log_handler_when_closed():
    stream = FakeTerminal()
    setup_logging(0, "text", stream)
    before = sys.stdout
    view = ProgressView(enabled=True, stream=stream)
    view.start(documents=1)
    during = sys.stdout  # stdout carries data (--stdout): the bar must not redirect it
    view.close()
    logging.getLogger("ocrprune").info("after")
    assert during is before
    assert screen(stream.getvalue())[-2:][0].startswith("pages")
    assert screen(stream.getvalue())[-1] == "ocrprune: after"
    assert stream.getvalue().endswith("ocrprune: after\n")
