"""The batch contract a cron job relies on: every page gets a status, the exit code tells the
truth, a re-run resumes safely (page by page) and reports the state of everything, one bad input
costs one input. Driven through `runner.run` with a scripted engine (fast, exact) and through
the real `ocrprune` entry point."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from docgen import make_pdf
from scripted import FAST, INFO, ScriptedEngine, pdf_with_sizes, run_scripted, statuses
from typer.testing import CliRunner

import ocrprune.run as runner
from ocrprune.cli import app
from ocrprune.config import ModelConfig, RunConfig
from ocrprune.errors import ExitCode
from ocrprune.writers import files

REPO = Path(__file__).resolve().parents[2]
LOOP = ("length", "<td></td>" * 40, [7, 8] * 40)  # a capped page whose tail repeats: repetition


# ---- 1. capped pages are `length`, loops are `repetition` ----------------------------------------


def test_a_capped_page_is_length_with_its_text_kept_and_a_loop_is_repetition(tmp_path):
    pdf = pdf_with_sizes(tmp_path / "doc.pdf", 3)
    engine = ScriptedEngine({2: ("length", "a long page, cut short", [9, 10, 11]), 3: LOOP})
    outcome = run_scripted(tmp_path, [pdf], engine)
    assert statuses(outcome) == {"doc.pdf": ["ok", "length", "repetition"]}
    assert int(outcome.exit_code) == 3
    page2 = json.loads((tmp_path / "out" / "doc.pdf.json").read_text())["pages"][1]
    assert page2["markdown"] == "a long page, cut short"
    assert "token limit without end-of-sequence" in page2["error"]


def test_a_capped_output_is_a_loop_only_when_its_tail_repeats():
    from ocrprune.postprocess.loops import ends_in_loop, line_loop, token_loop_period

    assert token_loop_period([1, 2, 3] * 11) == 3  # 33 tokens, three copies and more
    assert token_loop_period(list(range(40))) is None
    assert token_loop_period([4] * 31) is None and token_loop_period([4] * 32) == 1
    assert line_loop("\n".join(["| 1 | x |"] * 8)) == "| 1 | x |"
    assert line_loop("\n".join(f"row {i}" for i in range(20))) is None
    assert ends_in_loop(list(range(100)), "a\nb\nc") is False


def test_convert_with_a_small_token_cap_exits_3_and_quiet_still_names_the_pages(tmp_path):
    make_pdf(tmp_path / "report.pdf", pages=2)
    result = CliRunner().invoke(
        app, ["convert", str(tmp_path / "report.pdf"), "--out", str(tmp_path / "out"), "--base", str(tmp_path),
              *FAST, "--max-new-tokens", "2", "-q"]
    )
    assert result.exit_code == 3, result.output
    doc = json.loads((tmp_path / "out" / "report.pdf.json").read_text())
    assert {p["status"] for p in doc["pages"]} <= {"length", "repetition"}
    assert all(p["tokens"]["generated"] == 2 for p in doc["pages"])
    lines = [line for line in result.output.splitlines() if "report.pdf page" in line]
    assert len(lines) == 2 and all("length" in line or "repetition" in line for line in lines)


# ---- 2. exit codes ----------------------------------------------------------------------------------


def test_an_empty_folder_or_an_empty_stdin_list_is_nothing_to_do_and_exits_0(tmp_path):
    (tmp_path / "inbox").mkdir()
    runner = CliRunner()
    folder = runner.invoke(app, ["convert", str(tmp_path / "inbox"), "--out", str(tmp_path / "out"), *FAST])
    assert folder.exit_code == 0, folder.output
    assert "nothing to do" in folder.output
    stdin = runner.invoke(app, ["convert", "-", "--out", str(tmp_path / "out"), *FAST], input="")
    assert stdin.exit_code == 0 and "nothing to do" in stdin.output
    assert not (tmp_path / "out" / "report.json").exists()


def test_a_path_that_does_not_exist_is_a_named_failure_and_exits_4(tmp_path):
    result = CliRunner().invoke(app, ["convert", str(tmp_path / "nope.pdf"), "--out", str(tmp_path / "out"), *FAST])
    assert result.exit_code == 4
    assert "nope.pdf: missing" in result.output


def test_every_page_failing_exits_4_and_a_partial_run_exits_3(tmp_path):
    pdf = pdf_with_sizes(tmp_path / "doc.pdf", 2)
    from ocrprune.runtime.hf.engine import PageOutput  # noqa: F401

    class Broken(ScriptedEngine):
        def run(self, images):
            raise RuntimeError("device lost")

    assert int(run_scripted(tmp_path, [pdf], Broken()).exit_code) == 4
    mixed = run_scripted(tmp_path, [pdf, tmp_path / "missing.pdf"], ScriptedEngine(), force=True)
    assert int(mixed.exit_code) == 3


# ---- 3. re-runs tell the truth -------------------------------------------------------------------


def test_a_rerun_over_capped_pages_exits_3_reports_everything_and_keeps_each_runs_report(tmp_path):
    capped = pdf_with_sizes(tmp_path / "capped.pdf", 2)
    good = pdf_with_sizes(tmp_path / "good.pdf", 1)
    script = {2: ("length", "cut", [3])}
    first = run_scripted(tmp_path, [capped, good], ScriptedEngine(script))
    assert int(first.exit_code) == 3
    engine = ScriptedEngine(script)
    second = run_scripted(tmp_path, [capped, good], engine)
    assert engine.seen == []  # nothing redone
    assert int(second.exit_code) == 3
    assert [(Path(d.source).name, d.skipped) for d in second.docs] == [("capped.pdf", True), ("good.pdf", True)]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["documents"] == {"total": 2, "ok": 1, "failed": 1, "skipped": 2, "skipped_not_ok": 1, "not_reached": 0}
    assert report["pages"]["by_status"]["length"] == 1 and report["pages"]["by_status"]["ok"] == 2
    assert report["pages"]["processed"] == 0
    rows = list(csv.DictReader(io.StringIO((tmp_path / "out" / "pages.csv").read_text())))
    assert [(Path(r["source"]).name, r["page"], r["status"], r["skipped"]) for r in rows] == [
        ("capped.pdf", "1", "ok", "true"), ("capped.pdf", "2", "length", "true"), ("good.pdf", "1", "ok", "true")]
    assert rows[0]["visual_kept"] == "32"  # the recorded figures, not blanks
    runs = sorted((tmp_path / "out" / ".ocrprune" / "runs").iterdir())
    assert len(runs) == 2
    assert json.loads((runs[0] / "report.json").read_text())["pages"]["processed"] == 3


def test_rerun_message_says_how_many_documents_need_retry_failed(tmp_path):
    make_pdf(tmp_path / "report.pdf", pages=1)
    args = ["convert", str(tmp_path / "report.pdf"), "--out", str(tmp_path / "out"), *FAST, "--max-new-tokens", "2"]
    assert CliRunner().invoke(app, args).exit_code == 3
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 3, again.output
    assert "1 skipped document(s) have failed or capped pages recorded; --retry-failed redoes those pages" in again.output


def test_retry_failed_redoes_only_the_pages_that_failed(tmp_path):
    pdf = pdf_with_sizes(tmp_path / "doc.pdf", 4)
    first = run_scripted(tmp_path, [pdf], ScriptedEngine({2: ("length", "cut", [3]), 4: ("timeout", "t", [3])}))
    assert statuses(first) == {"doc.pdf": ["ok", "length", "ok", "timeout"]}
    engine = ScriptedEngine()
    again = run_scripted(tmp_path, [pdf], engine, retry_failed=True)
    assert sorted(engine.seen) == [2, 4]
    assert statuses(again) == {"doc.pdf": ["ok", "ok", "ok", "ok"]} and int(again.exit_code) == 0
    assert not (tmp_path / "out" / ".ocrprune" / "doc.pdf.pages").exists()  # checkpoints gone once all ok


# ---- 4. page-level resume ------------------------------------------------------------------------


def _without_timings(text: str) -> dict:
    doc = json.loads(text)
    for page in doc["pages"]:
        page.pop("timings_ms")
    return doc


def test_an_interrupted_document_resumes_at_its_first_unfinished_page_with_identical_outputs(tmp_path):
    pdf = pdf_with_sizes(tmp_path / "in" / "big.pdf", 9)
    whole = run_scripted(tmp_path, [pdf], ScriptedEngine({4: ("length", "cut", [3])}), out=tmp_path / "whole")
    assert int(whole.exit_code) == 3

    engine = ScriptedEngine({4: ("length", "cut", [3])}, interrupt_after=5, signum=signal.SIGTERM)
    stopped = run_scripted(tmp_path, [pdf], engine, batch=1)
    assert int(stopped.exit_code) == 128 + signal.SIGTERM
    out = tmp_path / "out"
    assert not (out / "in" / "big.pdf.md").exists()  # the document itself is not final yet
    assert sorted(p.name for p in (out / "in" / ".ocrprune" / "big.pdf.pages").glob("p*.json")) == [
        f"p{n:06d}.json" for n in range(1, 6)]
    assert json.loads((out / "report.json").read_text())["interrupted"] is True

    resumed_engine = ScriptedEngine({4: ("length", "cut", [3])})
    resumed = run_scripted(tmp_path, [pdf], resumed_engine)
    assert resumed_engine.seen == [6, 7, 8, 9]
    assert int(resumed.exit_code) == 3
    assert (out / "in" / "big.pdf.md").read_bytes() == (tmp_path / "whole" / "in" / "big.pdf.md").read_bytes()
    assert _without_timings((out / "in" / "big.pdf.json").read_text()) == _without_timings(
        (tmp_path / "whole" / "in" / "big.pdf.json").read_text())


def test_checkpoints_from_other_options_are_discarded(tmp_path):
    pdf = pdf_with_sizes(tmp_path / "doc.pdf", 3)
    run_scripted(tmp_path, [pdf], ScriptedEngine(interrupt_after=2), batch=1)
    engine = ScriptedEngine()
    outcome = run_scripted(tmp_path, [pdf], engine, page_separator="\n---\n")
    assert engine.seen == [1, 2, 3]
    assert int(outcome.exit_code) == 0


# ---- 7. signals, in a real process -------------------------------------------------------------


@pytest.mark.slow  # a real process importing torch; fast: test_a_real_sigterm_in_process_stops_the_run_keeps_pages_and_exits_143
def test_sigterm_stops_a_real_run_keeps_pages_and_exits_143(tmp_path):
    make_pdf(tmp_path / "in" / "long.pdf", pages=40)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "ocrprune", "convert", str(tmp_path / "in"), "--out", str(out), "--base", str(tmp_path),
            *FAST[:-2], "--batch-size", "1", "--max-new-tokens", "16"]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    pages = out / "in" / ".ocrprune" / "long.pdf.pages"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(pages.glob("p*.json"))) < 2:
        time.sleep(0.05)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 143, stderr
    assert time.monotonic() - sent < 10
    assert "interrupted (SIGTERM)" in stderr
    assert json.loads((out / "report.json").read_text())["interrupted"] is True
    assert len(list(pages.glob("p*.json"))) >= 2 and not (out / "in" / "long.pdf.md").exists()


class SelfSignalling(ScriptedEngine):
    """Sends a real SIGTERM to this process when asked for page `at`, as `timeout` or systemd would."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.sent = at, 0.0

    def run(self, images):
        from scripted import page_of

        if any(page_of(image) == self.at for image in images):
            self.sent = time.monotonic()
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises at once; sleeping on would mean no handler
        return super().run(images)


def test_a_real_sigterm_in_process_stops_the_run_keeps_pages_and_exits_143(tmp_path):
    """The fast sibling of the test above: the same signal, delivered to this process mid-run."""
    pdf = pdf_with_sizes(tmp_path / "in" / "long.pdf", 6)
    caught: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: caught.append(signum))  # never pytest's death
    engine = SelfSignalling(at=3)
    try:
        outcome = run_scripted(tmp_path, [pdf], engine, batch=1)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert caught == []  # the run's own handler took the signal
    assert int(outcome.exit_code) == 143
    assert time.monotonic() - engine.sent < 10
    out = tmp_path / "out"
    assert json.loads((out / "report.json").read_text())["interrupted"] is True
    pages = out / "in" / ".ocrprune" / "long.pdf.pages"
    assert len(list(pages.glob("p*.json"))) >= 2 and not (out / "in" / "long.pdf.md").exists()


# ---- 8/9. fast failure, overlapping runs ------------------------------------------------------


def test_a_missing_input_fails_without_importing_torch(tmp_path):
    code = (
        "import sys\n"
        "from ocrprune.cli import main\n"
        "sys.argv = ['ocrprune', 'convert', sys.argv[1], '--out', sys.argv[2]]\n"
        "try:\n    main()\n"
        "except SystemExit as exc:\n"
        "    print('exit', exc.code, 'torch' in sys.modules, 'transformers' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "nope.pdf"), str(tmp_path / "out")],
                            capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.stdout.strip() == "exit 4 False False", result.stderr
    assert "nope.pdf: missing: no such file or folder" in result.stderr


def test_a_second_run_into_the_same_output_folder_exits_75_at_once(tmp_path):
    pdf = pdf_with_sizes(tmp_path / "doc.pdf", 1)
    (tmp_path / "out").mkdir()
    with files.RunLock(tmp_path / "out"):
        result = CliRunner().invoke(app, ["convert", str(pdf), "--out", str(tmp_path / "out"), *FAST])
    assert result.exit_code == int(ExitCode.BUSY) == 75, result.output
    assert f"(pid {os.getpid()}) is writing to" in result.output
    assert not (tmp_path / "out" / "doc.pdf.md").exists()


# ---- 10. pipelines -----------------------------------------------------------------------------------


def test_stdout_json_lines_carry_a_record_for_every_input_including_failures(tmp_path):
    pdf = pdf_with_sizes(tmp_path / "doc.pdf", 2)
    emitted: list[str] = []
    config = RunConfig(inputs=(str(pdf), str(tmp_path / "gone.pdf")), out=tmp_path / "unused", base=tmp_path,
                       model=ModelConfig(model="tiny-random", device="cpu"), stdout=True)
    outcome = runner.run(config, emit=emitted.append, engine_factory=lambda: (ScriptedEngine(), INFO, 2))
    records = [json.loads(line) for text in emitted for line in text.splitlines()]
    assert [(Path(r["source"]).name, r["page"], r["status"]) for r in records] == [
        ("doc.pdf", 1, "ok"), ("doc.pdf", 2, "ok"), ("gone.pdf", None, "document_error")]
    assert records[2]["error_kind"] == "missing"
    assert int(outcome.exit_code) == 3
    assert not (tmp_path / "unused").exists()


def test_stdout_with_format_json_prints_the_one_documents_json(tmp_path):
    pdf = pdf_with_sizes(tmp_path / "doc.pdf", 2)
    emitted: list[str] = []
    config = RunConfig(inputs=(str(pdf),), out=tmp_path / "unused", base=tmp_path, formats=("json",),
                       model=ModelConfig(model="tiny-random", device="cpu"), stdout=True)
    runner.run(config, emit=emitted.append, engine_factory=lambda: (ScriptedEngine(), INFO, 2))
    (text,) = emitted
    doc = json.loads(text)
    assert doc["schema"] == "ocrprune.document/1" and [p["markdown"] for p in doc["pages"]] == [
        "text of page 1", "text of page 2"]


def test_markdown_on_stdout_never_links_figure_files_that_were_not_written(tmp_path):
    pdf = pdf_with_sizes(tmp_path / "doc.pdf", 1)
    figure = "<|ref|>image<|/ref|><|det|>[[100, 100, 900, 900]]<|/det|>\nafter"
    emitted: list[str] = []
    config = RunConfig(inputs=(str(pdf),), out=tmp_path / "unused", base=tmp_path,
                       model=ModelConfig(model="tiny-random", device="cpu"), stdout=True)
    runner.run(config, emit=emitted.append, engine_factory=lambda: (ScriptedEngine({1: ("ok", figure, [1])}), INFO, 2))
    assert emitted == ["[figure]\n\nafter\n"]


# ---- #9: model-side faults never lose a page --------------------------------------------------


def test_an_engine_returning_one_output_too_few_marks_the_batch_model_error(tmp_path):
    pdf = pdf_with_sizes(tmp_path / "doc.pdf", 4)
    other = pdf_with_sizes(tmp_path / "other.pdf", 1)
    outcome = run_scripted(tmp_path, [pdf, other], ScriptedEngine(drop_last=True), batch=2)
    assert statuses(outcome) == {"doc.pdf": ["model_error"] * 4, "other.pdf": ["model_error"]}
    assert all(p.error == "the engine returned 1 outputs for 2 pages" for p in outcome.docs[0].pages)
    assert int(outcome.exit_code) == 4
    assert json.loads((tmp_path / "out" / "report.json").read_text())["pages"]["total"] == 5


def test_a_failure_in_post_processing_costs_that_page_only(tmp_path, monkeypatch):
    from ocrprune import postprocess

    real = postprocess.postprocess_page

    def flaky(raw_text, image, page_no):
        if page_no == 2:
            raise OSError("cannot encode figure")
        return real(raw_text, image, page_no)

    monkeypatch.setattr(postprocess, "postprocess_page", flaky)
    outcome = run_scripted(tmp_path, [pdf_with_sizes(tmp_path / "doc.pdf", 3)], ScriptedEngine())
    assert statuses(outcome) == {"doc.pdf": ["ok", "model_error", "ok"]}
    assert outcome.docs[0].pages[1].error == "post-processing failed: OSError: cannot encode figure"
    assert outcome.docs[0].pages[1].raw_text == "text of page 2"
    assert (tmp_path / "out" / "report.json").exists()


def test_a_full_disk_mid_run_is_exit_6_with_one_line_and_no_trusted_half_document(tmp_path, monkeypatch):
    import errno

    pdfs = [pdf_with_sizes(tmp_path / f"d{n}.pdf", 1) for n in range(3)]
    real_replace = os.replace
    calls = {"n": 0}

    def full(src, dst, *args, **kwargs):
        if str(dst).endswith("d1.pdf.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        calls["n"] += 1
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(files.os, "replace", full)
    result = CliRunner().invoke(app, ["convert", *map(str, pdfs), "--out", str(tmp_path / "out"), *FAST, "--base", str(tmp_path)])
    monkeypatch.setattr(files.os, "replace", real_replace)
    assert result.exit_code == 6, result.output
    errors = [line for line in result.output.splitlines() if "No space left on device" in line]
    assert len(errors) == 1 and "d1.pdf.json" in errors[0]
    assert "Traceback" not in result.output
    key_ok = files.read_manifest(files.OutputLayout(tmp_path / "out").paths_for("d1.pdf"))
    assert key_ok is None  # the half-written document has no manifest: a re-run redoes it


def test_an_input_that_once_converted_and_now_fails_loses_its_stale_outputs(tmp_path):
    pdf = pdf_with_sizes(tmp_path / "doc.pdf", 1)
    assert int(run_scripted(tmp_path, [pdf], ScriptedEngine()).exit_code) == 0
    assert (tmp_path / "out" / "doc.pdf.md").exists()
    pdf.write_bytes(b"%PDF-1.4\n" + b"\x00garbage" * 50)
    outcome = run_scripted(tmp_path, [pdf], ScriptedEngine())
    assert int(outcome.exit_code) == 4
    assert not (tmp_path / "out" / "doc.pdf.md").exists() and not (tmp_path / "out" / "doc.pdf.json").exists()
    assert not (tmp_path / "out" / ".ocrprune" / "doc.pdf.manifest.json").exists()


def test_a_render_error_names_the_file_and_page_once(tmp_path):
    from ocrprune.errors import InputError
    from ocrprune.raster import RenderedPage
    from ocrprune.records import KeepInfo
    from ocrprune.run.document import failed_page

    error = InputError("a.pdf", "render_error", "bad content stream", page=3)
    page = failed_page(RenderedPage(3, None, 1.0, error), "render_error", error.detail, KeepInfo())
    assert page.error == "bad content stream"
