"""Faults around the render process, seen from the real command line.

* A render process killed while idle between pages (OOM killer, an operator) costs no page: the
  fresh process reopens the document before rendering the next one. Killed while rendering, it
  costs that page alone, with one clear line and no traceback.
* MuPDF's own messages never reach stdout: each becomes a warning log line naming the file and
  page (JSON under `--log-format json`).
* `--pages` past a document's end is said once per document.

The command line runs in a subprocess (the render process writes to the real descriptors, which
only a subprocess captures) with the model replaced by a scripted engine (`DRIVER`), so each run
takes seconds and the test decides when the render process is killed.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest
from docgen import build_pdf, make_pdf, nested_forms, pdf_stream

import ocrprune.run as runner
from ocrprune.config import GenerationSettings, ModelConfig, PruneConfig, RasterConfig, RunConfig
from ocrprune.run.local import Run

SRC = Path(__file__).resolve().parents[2] / "src"
TESTS = Path(__file__).resolve().parents[1]

DRIVER = textwrap.dedent(
    """
    import os, signal, sys, time
    from pathlib import Path

    import ocrprune.raster as raster
    import ocrprune.run as runner
    from ocrprune.run.local import Run
    from ocrprune.runtime.api import BackendBase, PageOutput
    from ocrprune.records import KeepInfo, RunInfo, TokenCounts

    STREAMS = []
    INFO = RunInfo(model="scripted", revision=None, mode="tiny", keep="1", prune_method="rtprune",
                   prompt="p", device="cpu", dtype="fp32", dummy_model=True)


    class Recorded(raster.PageStream):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            STREAMS.append(self)


    def dead(pid):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return True
        return state in ("Z", "X")


    class Engine(BackendBase):
        # KILL_RENDER: "idle" kills the render process once the stream's queue is full (it has
        # nothing to do), "busy" while it renders the page after the first one.
        def __init__(self, kill):
            self.kill, self.calls = kill, 0

        def run(self, images):
            self.calls += 1
            if self.kill and self.calls == 1:
                stream = STREAMS[-1]
                if self.kill == "idle":
                    deadline = time.monotonic() + 20
                    while not stream._queue.full() and time.monotonic() < deadline:
                        time.sleep(0.02)
                time.sleep(0.3)
                pid = stream.render_pid
                os.kill(pid, signal.SIGKILL)
                while not dead(pid):
                    time.sleep(0.01)
            return [
                PageOutput(raw_text="text", status="ok", token_ids=[5, 1],
                           tokens=TokenCounts(visual_total=64, visual_kept=32, prompt_unpruned=80,
                                              prompt=48, generated=2),
                           keep=KeepInfo(setting="1", ratio=0.5), preprocess_ms=1.0,
                           encode_ms=1.0, prune_ms=1.0, prefill_ms=1.0, decode_ms=1.0)
                for _ in images
            ]


    if __name__ == "__main__":
        raster.PageStream = Recorded
        real_run = runner.run
        engine = Engine(os.environ.get("KILL_RENDER", ""))

        def run(config, **kwargs):
            return real_run(config, **{**kwargs, "engine_factory": lambda: (engine, INFO, 1)})

        runner.run = run
        Run.resolve_dtype = lambda self: "fp32"  # torch is imported for that alone: 20 s+
        from ocrprune.cli import main

        sys.argv = ["ocrprune", *sys.argv[1:]]
        main()
    """
)


def run_cli(tmp_path: Path, args: list[str], kill: str = "") -> subprocess.CompletedProcess[str]:
    """`ocrprune convert ARGS` in tmp_path (scripted engine), stdout and stderr captured."""
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
        "KILL_RENDER": kill,
        "COLUMNS": "200",
    }
    return subprocess.run(
        [sys.executable, str(script), "convert", *args, "--model", "tiny-random"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def page_statuses(path: Path) -> list[tuple[int, str, str | None]]:
    pages = json.loads(path.read_text())["pages"]
    return [(p["page"], p["status"], p.get("error")) for p in pages]


def make_slow_middle_pdf(path: Path) -> Path:
    """Three 200 x 300 pt pages; page 2 draws a form nested six levels deep, ten times per
    level (a million strokes: tens of seconds for MuPDF at 144 dpi), pages 1 and 3 one line."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R 4 0 R 5 0 R] /Count 3 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 300] /Contents 6 0 R >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 300] /Contents 7 0 R "
        b"/Resources << /XObject << /X 8 0 R >> >> >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 300] /Contents 6 0 R >>",
        pdf_stream(b"0 0 0 RG 10 10 m 190 290 l S"),
        pdf_stream(b"/X Do"),
    ]
    objects.extend(nested_forms(first=8))
    path.write_bytes(build_pdf(objects))
    return path


def make_bad_flate_pdf(path: Path) -> Path:
    """Two pages; page 2's content stream claims FlateDecode but is not zlib data, so MuPDF
    says `zlib error: incorrect header check` while rendering it (and renders it blank)."""
    font = b"/Resources << /Font << /F1 7 0 R >> >>"
    good = zlib.compress(b"BT /F1 12 Tf 20 260 Td (page 1) Tj ET")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R 4 0 R] /Count 2 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 300] /Contents 5 0 R %s >>" % font,
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 300] /Contents 6 0 R %s >>" % font,
        pdf_stream(good, b"/Filter /FlateDecode"),
        pdf_stream(b"this is not zlib data at all", b"/Filter /FlateDecode"),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    path.write_bytes(build_pdf(objects))
    return path


ZLIB_MESSAGE = "library error: zlib error: incorrect header check"


# --- the render process dies --------------------------------------------------------------------


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")
def test_a_render_process_killed_between_pages_costs_no_page(tmp_path: Path) -> None:
    # 24 pages: the stream holds 16 in its queue and one more rendered, so when the engine is on
    # page 1 the render process is idle with pages 19-24 still to render.
    make_pdf(tmp_path / "long.pdf", 24, size=(72, 72))
    done = run_cli(tmp_path, ["long.pdf", "--out", "out"], kill="idle")
    assert (done.returncode, done.stdout) == (0, "")
    assert "Traceback" not in done.stderr
    assert "render_error" not in done.stderr and "has no document open" not in done.stderr
    statuses = page_statuses(tmp_path / "out" / "long.pdf.json")
    assert statuses == [(n, "ok", None) for n in range(1, 25)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")
def test_a_render_process_killed_while_rendering_costs_only_that_page(tmp_path: Path) -> None:
    make_slow_middle_pdf(tmp_path / "slow.pdf")
    done = run_cli(tmp_path, ["slow.pdf", "--out", "out", "-q"], kill="busy")
    died = "the render process died (killed by SIGKILL) while rendering this page"
    assert (done.returncode, done.stdout) == (3, "")
    assert done.stderr.splitlines() == [f"ocrprune: slow.pdf page 2: render_error: {died}"]
    assert page_statuses(tmp_path / "out" / "slow.pdf.json") == [
        (1, "ok", None),
        (2, "render_error", died),
        (3, "ok", None),
    ]


# --- MuPDF's messages ---------------------------------------------------------------------------


def test_mupdf_messages_are_warnings_on_stderr_naming_file_and_page(tmp_path: Path) -> None:
    make_bad_flate_pdf(tmp_path / "bad.pdf")
    done = run_cli(tmp_path, ["bad.pdf", "--out", "out", "-q"])
    assert (done.returncode, done.stdout) == (0, "")
    lines = done.stderr.splitlines()
    assert f"ocrprune: bad.pdf page 2: MuPDF: {ZLIB_MESSAGE}" in lines
    assert len([line for line in lines if ZLIB_MESSAGE in line]) == 1  # once per page
    assert all(line.startswith("ocrprune: bad.pdf page 2: MuPDF: ") for line in lines)
    statuses = page_statuses(tmp_path / "out" / "bad.pdf.json")
    assert statuses == [(1, "ok", None), (2, "ok", None)]


def test_mupdf_messages_under_json_logs_keep_stderr_json(tmp_path: Path) -> None:
    make_bad_flate_pdf(tmp_path / "bad.pdf")
    done = run_cli(tmp_path, ["bad.pdf", "--out", "out", "--log-format", "json"])
    assert (done.returncode, done.stdout) == (0, "")
    records = [json.loads(line) for line in done.stderr.splitlines()]  # every line is JSON
    mupdf = [{k: r.get(k) for k in ("level", "message", "file", "page", "kind")} for r in records]
    assert {
        "level": "warning",
        "message": f"bad.pdf page 2: MuPDF: {ZLIB_MESSAGE}",
        "file": "bad.pdf",
        "page": 2,
        "kind": "mupdf",
    } in mupdf


# --- --pages past the end -----------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_torch_for_the_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    """The scripted engine runs in fp32; resolving the dtype would import torch (20 s+)."""
    monkeypatch.setattr(Run, "resolve_dtype", lambda self: "fp32")


def run_pages(
    tmp_path: Path, names: list[str], pages: tuple[tuple[int, int], ...]
) -> runner.RunOutcome:
    from scripted import INFO, ScriptedEngine

    config = RunConfig(
        inputs=tuple(names),
        out=tmp_path / "out",
        model=ModelConfig(model="tiny-random", device="cpu"),
        prune=PruneConfig(keep=1.0),
        generation=GenerationSettings(mode="tiny", max_new_tokens=64),
        raster=RasterConfig(dpi=72, pages=pages),
        base=tmp_path,
    )
    return runner.run(config, engine_factory=lambda: (ScriptedEngine(), INFO, 4))


def test_pages_past_the_end_are_said_once_per_document(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    three = make_pdf(tmp_path / "three.pdf", 3, size=(72, 72))
    ten = make_pdf(tmp_path / "ten.pdf", 10, size=(72, 72))
    with caplog.at_level(logging.WARNING, logger="ocrprune"):
        outcome = run_pages(tmp_path, [str(three), str(ten)], ((2, 5),))
    assert int(outcome.exit_code) == 0
    warned = [r for r in caplog.records if r.levelname == "WARNING"]
    warnings = [(r.getMessage(), getattr(r, "file"), getattr(r, "kind")) for r in warned]
    assert warnings == [
        (
            f"{three}: --pages asks for pages up to 5; the document has 3",
            str(three),
            "pages_beyond_end",
        )
    ]
    assert [p for p, _, _ in page_statuses(tmp_path / "out" / "three.pdf.json")] == [2, 3]
    assert [p for p, _, _ in page_statuses(tmp_path / "out" / "ten.pdf.json")] == [2, 3, 4, 5]


def test_an_open_page_range_is_never_past_the_end(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ten = make_pdf(tmp_path / "ten.pdf", 10, size=(72, 72))
    with caplog.at_level(logging.WARNING, logger="ocrprune"):
        outcome = run_pages(tmp_path, [str(ten)], ((7, 10**9),))  # `--pages 7-`
    assert int(outcome.exit_code) == 0
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == []
    assert [p for p, _, _ in page_statuses(tmp_path / "out" / "ten.pdf.json")] == [7, 8, 9, 10]


def test_a_document_with_no_selected_page_is_still_no_pages_selected(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    three = make_pdf(tmp_path / "three.pdf", 3, size=(72, 72))
    with caplog.at_level(logging.WARNING, logger="ocrprune"):
        outcome = run_pages(tmp_path, [str(three)], ((7, 9),))
    assert [(d.error_kind, d.error) for d in outcome.docs] == [
        ("no_pages_selected", "--pages selects none of the document's 3 page(s)")
    ]
    assert not any("asks for pages" in r.getMessage() for r in caplog.records)


def test_the_render_process_answers_a_page_request_without_a_document() -> None:
    """Defence in depth: the parent always opens first, but a child asked for a page with no
    document open answers with an error instead of dying with a traceback."""
    import threading

    from ocrprune.raster.worker import RenderWorker

    worker = RenderWorker(threading.Event())
    try:
        reply = worker.call(("render", 4), 30.0)
        pid = worker.pid
        probed = worker.call(("probe", 4), 30.0)
        assert probed == ("probed", "the render process has no document open")
        assert worker.pid == pid  # still the same, living process
    finally:
        worker.shutdown()
    assert reply == ("error", 4, 0.0, "internal", "the render process has no document open", ())


def test_pages_beyond_counts_explicit_pages_and_the_start_of_open_ranges() -> None:
    from ocrprune.raster.base import pages_beyond

    assert pages_beyond(3, ((2, 5),)) == 5
    assert pages_beyond(3, ((1, 3),)) is None
    assert pages_beyond(10, ((7, 10**9),)) is None  # `7-`
    assert pages_beyond(5, ((1, 2), (7, 10**9))) == 7  # `1-2,7-`: page 7 is past the end
    assert pages_beyond(3, ((1, 1), (9, 9), (4, 6))) == 9
    assert pages_beyond(3, ()) is None
