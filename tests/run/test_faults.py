"""One bad input costs one input (#9): inputs that change under a running batch, names that are
bytes, output names that are taken, and every log event on one line. Driven through
`runner.run` with the scripted engine of `test_contract`."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pytest
from scripted import ScriptedEngine, pdf_with_sizes, run_scripted, statuses

import ocrprune.run.local as local


def _vanish_after_listing(monkeypatch, victim: Path, action) -> None:
    """Apply `action` to `victim` right after the inputs are listed (before any is read)."""
    real = local.expand_inputs

    def expand(*args, **kwargs):
        result = real(*args, **kwargs)
        action(victim)
        return result

    monkeypatch.setattr(local, "expand_inputs", expand)


def test_an_input_deleted_after_listing_is_a_named_failure_and_the_rest_converts(tmp_path, monkeypatch):
    keep = pdf_with_sizes(tmp_path / "keep.pdf", 1)
    gone = pdf_with_sizes(tmp_path / "gone.pdf", 1)
    _vanish_after_listing(monkeypatch, gone, Path.unlink)
    outcome = run_scripted(tmp_path, [keep, gone], ScriptedEngine())
    assert statuses(outcome) == {"keep.pdf": ["ok"], "gone.pdf": []}
    failed = next(d for d in outcome.docs if d.error)
    assert (failed.error_kind, failed.error) == ("missing", "the file no longer exists")
    assert int(outcome.exit_code) == 3


def test_an_input_turned_into_a_fifo_after_listing_fails_without_hanging(tmp_path, monkeypatch):
    keep = pdf_with_sizes(tmp_path / "keep.pdf", 1)
    pipe = pdf_with_sizes(tmp_path / "pipe.pdf", 1)

    def to_fifo(path: Path) -> None:
        path.unlink()
        os.mkfifo(path)

    _vanish_after_listing(monkeypatch, pipe, to_fifo)
    outcome = run_scripted(tmp_path, [keep, pipe], ScriptedEngine())  # a hang would time the test out
    failed = next(d for d in outcome.docs if d.error)
    assert (Path(failed.source).name, failed.error_kind) == ("pipe.pdf", "not_a_document")
    assert statuses(outcome)["keep.pdf"] == ["ok"]


def test_a_name_that_is_not_utf8_is_reported_losslessly_in_json_csv_and_logs(tmp_path, caplog):
    folder = tmp_path / "latin"
    folder.mkdir()
    raw = os.fsencode(folder) + b"/caf\xe9.pdf"
    os.rename(pdf_with_sizes(tmp_path / "plain.pdf", 1), raw)  # MuPDF cannot save to such a name
    outcome = run_scripted(tmp_path, [folder], ScriptedEngine())
    assert int(outcome.exit_code) == 0, outcome.docs
    (doc,) = outcome.docs
    assert doc.source.endswith("latin/caf\\xe9.pdf")
    report_rows = list(csv.DictReader(io.StringIO((tmp_path / "out" / "pages.csv").read_text(encoding="utf-8"))))
    assert report_rows[0]["source"].endswith("caf\\xe9.pdf")
    written = [p for p in (tmp_path / "out" / "latin").iterdir() if p.suffix == ".json"]
    assert len(written) == 1
    assert json.loads(written[0].read_text(encoding="utf-8"))["source"].endswith("caf\\xe9.pdf")


def test_a_file_name_with_a_newline_stays_on_one_log_line(tmp_path, caplog):
    odd = pdf_with_sizes(tmp_path / "two\nlines.pdf", 1)
    missing = tmp_path / "no\nsuch.pdf"
    outcome = run_scripted(tmp_path, [odd, missing], ScriptedEngine())
    messages = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any("no\\nsuch.pdf: missing" in m for m in messages)
    assert all("\n" not in m for m in messages)
    assert {d.source.rsplit("/", 1)[-1] for d in outcome.docs} == {"two\\nlines.pdf", "no\\nsuch.pdf"}


def test_an_output_name_taken_by_a_folder_falls_back_to_a_stable_hashed_name(tmp_path):
    pdf = pdf_with_sizes(tmp_path / "x", 1)  # no extension: outputs x.md, x.json
    (tmp_path / "out" / "x.md").mkdir(parents=True)  # a folder sits where x.md must go
    outcome = run_scripted(tmp_path, [pdf], ScriptedEngine())
    assert int(outcome.exit_code) == 0
    written = sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_file() and p.name.startswith("x~"))
    assert len(written) == 2 and written[0].endswith(".json") and written[1].endswith(".md")
    again = run_scripted(tmp_path, [pdf], ScriptedEngine())
    assert [d.skipped for d in again.docs] == [True]  # the same fallback name, found again


def test_every_input_is_accounted_for_even_if_the_stream_drops_a_document(tmp_path, monkeypatch):
    from ocrprune import raster

    docs = [pdf_with_sizes(tmp_path / f"d{n}.pdf", 1) for n in range(3)]
    real_init = raster.PageStream.__init__

    def lossy(self, documents, *args, **kwargs):
        real_init(self, documents, *args, **kwargs)
        self.docs = self.docs[:-1]  # a stream bug: the last document never comes out

    monkeypatch.setattr(raster.PageStream, "__init__", lossy)
    outcome = run_scripted(tmp_path, docs, ScriptedEngine())
    assert len(outcome.docs) == 3
    lost = outcome.docs[-1]
    assert (Path(lost.source).name, lost.error_kind) == ("d2.pdf", "internal")
    assert int(outcome.exit_code) == 3


# The same lie told at 2,000 pages in the default run; at 100,000 (the scale is the point) with --runslow.
@pytest.mark.parametrize("claimed", [2_000, pytest.param(100_000, marks=pytest.mark.slow)])
def test_a_pdf_claiming_100000_pages_writes_its_real_pages_and_marks_the_rest(tmp_path, claimed):
    from docgen import make_lying_pdf

    pdf = make_lying_pdf(tmp_path / "lies.pdf", claimed=claimed)
    outcome = run_scripted(tmp_path, [pdf], ScriptedEngine())
    (doc,) = outcome.docs
    assert doc.page_count == claimed and len(doc.pages) == claimed
    assert [p.status for p in doc.pages[:4]] == ["ok", "ok", "ok", "render_error"]
    assert {p.status for p in doc.pages[3:]} == {"render_error"}
    assert int(outcome.exit_code) == 3
    # The bulk failure is recorded once, not checkpointed page by page.
    assert len(list((tmp_path / "out" / ".ocrprune" / "lies.pdf.pages").glob("p*.json"))) == 3


def test_the_pdfium_renderer_without_pypdfium2_is_one_line_and_exit_5(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import ocrprune.raster.open as raster
    from ocrprune.cli import app
    from ocrprune.errors import DependencyError

    def missing():
        raise DependencyError("--renderer pdfium needs pypdfium2: pip install 'ocrprune[pdfium]'")

    monkeypatch.setattr(raster, "import_pdfium", missing)
    pdf = pdf_with_sizes(tmp_path / "doc.pdf", 1)
    result = CliRunner().invoke(app, ["convert", str(pdf), "--out", str(tmp_path / "out"), "--renderer", "pdfium",
                                      "--model", "tiny-random", "--device", "cpu"])
    assert result.exit_code == 5
    assert [line for line in result.output.splitlines() if "pypdfium2" in line] == [
        "ocrprune: --renderer pdfium needs pypdfium2: pip install 'ocrprune[pdfium]'"]
