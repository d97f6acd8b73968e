"""The output folder is not ocrprune's alone (issue 15, items 4, 5, 6 and 9): whatever is planted
under --out, nothing outside it is written, created, deleted or read; a planted thing costs one
document, never the batch; a damaged manifest or page checkpoint is redone with one warning, never a
traceback or a hang; outputs of a format no longer written are removed. Each test checks the files
on disk inside --out and in a folder outside it that must stay byte-identical."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from docgen import make_pdf
from scripted import ScriptedEngine, pdf_with_sizes, run_scripted
from typer.testing import CliRunner

from ocrprune.cli import app
from ocrprune.errors import OutputError, UnsafeOutputError
from ocrprune.records import Figure
from ocrprune.writers import files

REPO = Path(__file__).resolve().parents[2]
CLI = ["--model", "tiny-random", "--device", "cpu", "--mode", "tiny", "--max-new-tokens", "8", "--batch-size", "4"]
SECRET = b"outside --out: must never change\n"
OPTIONS = {"mode": "tiny", "keep": "1", "formats": ["json", "md"]}
KEY = files.manifest_key("sha-in", OPTIONS, "model", None)
FIG = Figure("page0001_fig01.jpg", (1, 2, 3, 4), b"\xff\xd8jpeg")
LINKS = "ocrprune never follows links in its output folder"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder outside --out holding one file; every test ends with it unchanged."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret.txt").write_bytes(SECRET)
    return folder


@pytest.fixture
def out(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def untouched(outside: Path) -> bool:
    found = sorted(p.relative_to(outside).as_posix() for p in outside.rglob("*"))
    return found == ["secret.txt"] and (outside / "secret.txt").read_bytes() == SECRET


def link_message(path: Path, target: Path, root: Path) -> str:
    return f"refusing {path}: a symbolic link to {target}, outside {root}; {LINKS}"


def write_doc(out: Path, rel: str = "a/doc.pdf", *, md: str | None = "# md\n",
              js: str | None = '{"j": 1}\n', figures: tuple[Figure, ...] = (FIG,)) -> files.DocPaths:
    paths = files.OutputLayout(out).paths_for(rel)
    manifest = files.manifest_for("sha-in", OPTIONS, "model", None, ["ok"], source_path="/in/" + rel)
    files.write_document(paths, md, js, list(figures), manifest)
    return paths


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def returns_within(seconds: float, call):
    """`call()`'s result, failing (instead of hanging the suite) if it takes longer."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # re-raised in the test's thread
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still blocked after {seconds} s"
    assert time.monotonic() - started < seconds
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box.get("value")


# ---- item 4: run-level files planted as links --------------------------------------------------


def test_a_lock_file_planted_as_a_link_is_refused_and_its_target_never_truncated(out, outside):
    (out / ".ocrprune").mkdir()
    (out / ".ocrprune" / "lock").symlink_to(outside / "secret.txt")
    with pytest.raises(UnsafeOutputError) as err, files.RunLock(out):
        pass
    root = out.resolve()
    assert str(err.value) == link_message(root / ".ocrprune/lock", outside / "secret.txt", root)
    assert untouched(outside)


def test_a_lock_file_that_is_a_fifo_is_refused_at_once(out):
    (out / ".ocrprune").mkdir()
    os.mkfifo(out / ".ocrprune" / "lock")
    with pytest.raises(UnsafeOutputError) as err:
        returns_within(5, lambda: files.RunLock(out).__enter__())
    assert str(err.value) == f"refusing {out.resolve() / '.ocrprune/lock'}: a FIFO, not a regular file"


def test_an_ocrprune_folder_planted_as_a_link_is_refused_for_marker_lock_and_reports(out, outside):
    (out / ".ocrprune").symlink_to(outside, target_is_directory=True)
    root = out.resolve()
    expected = link_message(root / ".ocrprune", outside, root)
    for call in (lambda: files.prepare_output_root(out), lambda: files.RunLock(out).__enter__(),
                 lambda: files.write_run_report(out, "{}\n", "h\n", "run1")):
        with pytest.raises(UnsafeOutputError) as err:
            call()
        assert str(err.value) == expected
    assert untouched(outside)
    assert not (out / "report.json").exists()


def test_a_runs_folder_planted_as_a_link_is_refused_before_the_run_and_at_the_report(out, outside):
    (out / ".ocrprune").mkdir()
    (out / ".ocrprune" / "runs").symlink_to(outside, target_is_directory=True)
    root = out.resolve()
    expected = link_message(root / ".ocrprune/runs", outside, root)
    with pytest.raises(UnsafeOutputError) as err:
        files.prepare_output_root(out)
    assert str(err.value) == expected
    with pytest.raises(UnsafeOutputError) as err:
        files.write_run_report(out, "{}\n", "h\n", "run1")
    assert str(err.value) == expected
    assert untouched(outside)
    assert not (out / "report.json").exists() and not (out / ".ocrprune/OUTPUT_ROOT").exists()


def test_a_run_report_folder_planted_as_a_link_is_refused(out, outside):
    (out / ".ocrprune" / "runs").mkdir(parents=True)
    (out / ".ocrprune" / "runs" / "run1").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafeOutputError):
        files.write_run_report(out, "{}\n", "h\n", "run1")
    assert untouched(outside)


def test_an_output_root_marker_planted_as_a_link_is_refused(out, outside):
    (out / ".ocrprune").mkdir()
    (out / ".ocrprune" / "OUTPUT_ROOT").symlink_to(outside / "secret.txt")
    root = out.resolve()
    with pytest.raises(UnsafeOutputError) as err:
        files.prepare_output_root(out)
    assert str(err.value) == link_message(root / ".ocrprune/OUTPUT_ROOT", outside / "secret.txt", root)
    assert untouched(outside)


def test_a_report_json_planted_as_a_link_is_replaced_by_the_report_not_written_through(out, outside):
    (out / "report.json").symlink_to(outside / "secret.txt")
    (out / "pages.csv").symlink_to(outside / "new.csv")  # a dangling link: nothing created there
    files.write_run_report(out, '{"a": 1}\n', "h\n", "run1")
    assert not (out / "report.json").is_symlink() and (out / "report.json").read_text() == '{"a": 1}\n'
    assert not (out / "pages.csv").is_symlink() and (out / "pages.csv").read_text() == "h\n"
    assert (out / ".ocrprune/runs/run1/report.json").read_text() == '{"a": 1}\n'
    assert untouched(outside)


def test_prepare_output_root_and_the_lock_still_work_on_a_clean_folder(out):
    files.prepare_output_root(out)
    with files.RunLock(out):
        assert (out / ".ocrprune/lock").read_text() == f"{os.getpid()}\n"
    assert (out / ".ocrprune/OUTPUT_ROOT").read_text() == "ocrprune output folder: never read as input\n"


# ---- items 4 and 5: one document's folders planted as links --------------------------------------


def test_a_document_subfolder_planted_as_a_link_is_refused_for_that_document(out, outside):
    (out / "a").symlink_to(outside, target_is_directory=True)
    root = out.resolve()
    with pytest.raises(UnsafeOutputError) as err:
        files.OutputLayout(out).paths_for("a/doc.pdf")
    assert str(err.value) == link_message(root / "a", outside, root)
    assert untouched(outside)


def test_a_link_planted_after_planning_is_refused_at_every_write_and_read(out, outside):
    paths = files.OutputLayout(out).paths_for("a/doc.pdf")
    (out / "a").symlink_to(outside, target_is_directory=True)
    calls = {
        "write_document": lambda: files.write_document(paths, "x", "y", [FIG], {}),
        "save_checkpoint": lambda: files.save_checkpoint(paths, KEY, {"page": 1, "status": "ok"}),
        "load_checkpoints": lambda: files.load_checkpoints(paths, KEY),
        "clear_checkpoints": lambda: files.clear_checkpoints(paths),
        "read_manifest": lambda: files.read_manifest(paths),
        "remove_document": lambda: files.remove_document(paths),
        "taken_by_other": lambda: files.taken_by_other(paths, "/in/a/doc.pdf"),
        "is_done": lambda: files.is_done(paths, KEY, ["md"]),
    }
    refused = []
    for name, call in calls.items():
        with pytest.raises(UnsafeOutputError):
            call()
        refused.append(name)
    assert refused == list(calls)
    assert untouched(outside)


def test_a_figure_folder_planted_as_a_link_is_refused_and_nothing_is_written(out, outside):
    (out / "a").mkdir()
    (out / "a" / "doc.pdf_images").symlink_to(outside, target_is_directory=True)
    root = out.resolve()
    with pytest.raises(UnsafeOutputError) as err:
        files.OutputLayout(out).paths_for("a/doc.pdf")
    assert str(err.value) == link_message(root / "a/doc.pdf_images", outside, root)
    assert untouched(outside)
    assert sorted(p.name for p in (out / "a").iterdir()) == ["doc.pdf_images"]


def test_a_checkpoint_folder_planted_as_a_link_is_refused_and_never_emptied(out, outside):
    paths = files.OutputLayout(out).paths_for("a/doc.pdf")
    (out / "a" / ".ocrprune").mkdir(parents=True)
    (out / "a" / ".ocrprune" / "doc.pdf.pages").symlink_to(outside, target_is_directory=True)
    root = out.resolve()
    expected = link_message(root / "a/.ocrprune/doc.pdf.pages", outside, root)
    for call in (lambda: files.OutputLayout(out).paths_for("a/doc.pdf"),
                 lambda: files.save_checkpoint(paths, KEY, {"page": 1, "status": "ok"}),
                 lambda: files.load_checkpoints(paths, KEY),
                 lambda: files.clear_checkpoints(paths)):
        with pytest.raises(UnsafeOutputError) as err:
            call()
        assert str(err.value) == expected
    assert untouched(outside)


def test_a_documents_ocrprune_folder_planted_as_a_link_is_refused(out, outside):
    paths = files.OutputLayout(out).paths_for("a/doc.pdf")
    (out / "a").mkdir()
    (out / "a" / ".ocrprune").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafeOutputError):
        files.OutputLayout(out).paths_for("a/doc.pdf")
    with pytest.raises(UnsafeOutputError):
        files.write_document(paths, "x", None, [], {})
    assert untouched(outside)
    assert sorted(p.name for p in (out / "a").iterdir()) == [".ocrprune"]


def test_a_file_where_a_document_folder_goes_costs_that_document(out):
    (out / "a").write_text("mine")
    with pytest.raises(UnsafeOutputError) as err:
        files.OutputLayout(out).paths_for("a/doc.pdf")
    assert str(err.value) == f"refusing {out.resolve() / 'a'}: not a folder: a file is in the way"
    assert (out / "a").read_text() == "mine"


def test_an_output_planted_as_a_link_is_never_hashed_and_is_replaced(out, outside):
    paths = write_doc(out)
    (outside / "copy.md").write_bytes(paths.md.read_bytes())
    paths.md.unlink()
    paths.md.symlink_to(outside / "copy.md")  # same bytes as recorded: still not trusted
    assert files.is_done(paths, KEY, ["md", "json"]) is False
    write_doc(out, md="# new\n")
    assert not paths.md.is_symlink() and paths.md.read_text() == "# new\n"
    assert (outside / "copy.md").read_text() == "# md\n"
    (outside / "copy.md").unlink()
    assert untouched(outside)


def test_a_manifest_planted_as_a_link_is_never_read_and_is_replaced(out, outside, caplog):
    paths = write_doc(out)
    (outside / "m.json").write_bytes(paths.manifest.read_bytes())
    paths.manifest.unlink()
    paths.manifest.symlink_to(outside / "m.json")
    with caplog.at_level(logging.WARNING, logger="ocrprune"):
        assert files.read_manifest(paths) is None
        assert files.is_done(paths, KEY, ["md"]) is False
        assert files.remove_document(paths) is False
    assert warnings_of(caplog) == [
        f"{paths.manifest}: damaged manifest ignored (a symbolic link, not a regular file; never "
        "read); the document will be converted again"
    ]
    assert paths.md.exists()  # not trusted, so nothing it lists was removed
    write_doc(out)
    assert not paths.manifest.is_symlink() and files.read_manifest(paths)["key"] == KEY
    (outside / "m.json").unlink()
    assert untouched(outside)


@pytest.mark.parametrize(
    "listed",
    ["../../outside/secret.txt", "/etc/passwd", "other.pdf.md", "doc.pdf_images/sub/x.jpg", "../b/doc.pdf.md"],
)
def test_a_manifest_listing_anything_but_the_documents_outputs_is_refused_and_deletes_nothing(
    out, outside, listed
):
    paths = write_doc(out)
    sibling = write_doc(out, "a/other.pdf")
    other_folder = write_doc(out, "b/doc.pdf")
    manifest = json.loads(paths.manifest.read_text())
    manifest["outputs"][listed] = {"size": 1, "sha256": "0" * 64}
    paths.manifest.write_text(json.dumps(manifest))
    expected = (
        f"refusing {paths.manifest}: it lists {listed!r}, not one of this document's outputs in "
        f"{paths.md.parent}; remove the manifest to convert the document again"
    )
    for call in (lambda: files.read_manifest(paths), lambda: files.remove_document(paths),
                 lambda: files.taken_by_other(paths, "/in/a/doc.pdf"),
                 lambda: files.write_document(paths, "x", None, [], {})):
        with pytest.raises(UnsafeOutputError) as err:
            call()
        assert str(err.value) == expected
    assert untouched(outside)
    assert paths.md.exists() and sibling.md.exists() and other_folder.md.exists()
    assert paths.manifest.exists() and files.read_manifest(sibling) is not None


def test_a_checkpoint_naming_a_figure_outside_its_folder_is_refused(out, outside):
    paths = files.OutputLayout(out).paths_for("a/doc.pdf")
    files.save_checkpoint(paths, KEY, {"page": 1, "status": "ok", "figures": []})
    bad = {"page": 2, "status": "ok", "figures": [{"name": "../../x.jpg", "box": [0, 0, 1, 1], "jpeg": ""}]}
    files.save_checkpoint(paths, KEY, bad)
    with pytest.raises(UnsafeOutputError) as err:
        files.load_checkpoints(paths, KEY)
    assert str(err.value) == (
        f"refusing {paths.checkpoints / 'p000002.json'}: it names figure '../../x.jpg', outside the "
        "document's image folder (--force redoes the document)"
    )
    assert untouched(outside)


@pytest.mark.parametrize("name", ["../../x.jpg", "sub/x.jpg", "..", ""])
def test_a_figure_name_that_is_not_a_plain_name_is_refused_before_anything_is_written(out, outside, name):
    paths = files.OutputLayout(out).paths_for("a/doc.pdf")
    with pytest.raises(UnsafeOutputError) as err:
        files.write_document(paths, "# md\n", None, [Figure(name, (0, 0, 1, 1), b"j")], {})
    assert str(err.value).startswith(f"refusing {paths.images_dir / name}: figure name {name!r} is not")
    assert untouched(outside)
    assert not paths.md.exists() and not paths.manifest.exists()
    assert not (out.parent / "x.jpg").exists()


def test_a_full_disk_stays_a_plain_output_error_for_the_run(out, monkeypatch):
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    paths = files.OutputLayout(out).paths_for("a/doc.pdf")
    monkeypatch.setattr(files.os, "replace", full)
    with pytest.raises(OutputError) as err:
        files.write_document(paths, "# md\n", None, [], {})
    assert type(err.value) is OutputError
    assert str(err.value) == f"cannot write {paths.md}: No space left on device"
    assert list(paths.md.parent.iterdir()) == []  # no temp file left


# ---- item 6: damaged manifests ------------------------------------------------------------------


def _manifest_with(paths: files.DocPaths, **changes: object) -> bytes:
    manifest = json.loads(paths.manifest.read_text()) | changes
    return json.dumps(manifest).encode()


DAMAGED_MANIFESTS = {
    "truncated": (lambda p: p.manifest.read_bytes()[:40], "truncated"),
    "not JSON": (lambda p: b"<html>not a manifest</html>\n", "not JSON"),
    "empty": (lambda p: b"", "empty"),
    "list": (lambda p: b"[1, 2]\n", "a JSON list, not an object"),
    "unknown schema": (lambda p: _manifest_with(p, schema="ocrprune.manifest/9"),
                       "unknown schema 'ocrprune.manifest/9'"),
    "latin-1": (lambda p: _manifest_with(p, source="caf\u00e9").replace(b"\\u00e9", b"\xe9"), "not UTF-8"),
    "nested": (lambda p: b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    "outputs wrong type": (lambda p: _manifest_with(p, outputs={"doc.pdf.md": {"size": "5", "sha256": "x"}}),
                           "wrong shape: 'outputs' missing or of the wrong type"),
    "statuses wrong type": (lambda p: _manifest_with(p, page_statuses="ok"),
                            "wrong shape: 'page_statuses' of the wrong type"),
    "key missing": (lambda p: _manifest_with(p, key=None), "wrong shape: 'key' missing or of the wrong type"),
}


@pytest.mark.parametrize("kind", list(DAMAGED_MANIFESTS))
def test_a_damaged_manifest_is_absent_with_one_warning_and_trusted_by_nothing(out, caplog, kind):
    paths = write_doc(out)
    damage, reason = DAMAGED_MANIFESTS[kind]
    paths.manifest.write_bytes(damage(paths))
    with caplog.at_level(logging.WARNING, logger="ocrprune"):
        assert files.read_manifest(paths) is None
        assert files.taken_by_other(paths, "/in/elsewhere.pdf") is False
        assert files.is_done(paths, KEY, ["md"]) is False
        assert files.remove_document(paths) is False
    assert warnings_of(caplog) == [
        f"{paths.manifest}: damaged manifest ignored ({reason}); the document will be converted again"
    ]
    assert paths.md.read_text() == "# md\n" and (paths.images_dir / FIG.name).exists()  # nothing removed
    write_doc(out)  # the document is converted again: a good manifest replaces the damaged one
    assert files.is_done(paths, KEY, ["md", "json"]) is True


def test_a_manifest_larger_than_the_limit_is_not_read_past_it(out, caplog, monkeypatch):
    paths = write_doc(out)
    monkeypatch.setattr(files, "MANIFEST_MAX_BYTES", 100)
    assert paths.manifest.stat().st_size > 100
    with caplog.at_level(logging.WARNING, logger="ocrprune"):
        assert files.read_manifest(paths) is None
    assert warnings_of(caplog) == [
        f"{paths.manifest}: damaged manifest ignored (larger than 100 bytes); the document will be "
        "converted again"
    ]


def test_a_fifo_manifest_is_ignored_at_once_and_replaced(out, caplog):
    paths = write_doc(out)
    paths.manifest.unlink()
    os.mkfifo(paths.manifest)
    with caplog.at_level(logging.WARNING, logger="ocrprune"):
        assert returns_within(1, lambda: files.read_manifest(paths)) is None
        assert returns_within(1, lambda: files.is_done(paths, KEY, ["md"])) is False
    assert warnings_of(caplog) == [
        f"{paths.manifest}: damaged manifest ignored (a FIFO, not a regular file); the document "
        "will be converted again"
    ]
    returns_within(5, lambda: write_doc(out))
    assert paths.manifest.is_file() and files.is_done(paths, KEY, ["md", "json"]) is True


# ---- item 6: damaged page checkpoints ------------------------------------------------------------

PAGE1 = {"page": 1, "status": "ok", "markdown": "one", "figures": []}
PAGE2 = {"page": 2, "status": "ok", "markdown": "two " * 80, "figures": []}

DAMAGED_CHECKPOINTS = {
    "truncated": (b'{"page": 2, "status": "o', "truncated"),
    "not JSON": (b"garbage\n", "not JSON"),
    "list": (b"[2]\n", "a JSON list, not an object"),
    "latin-1": ('{"page": 2, "status": "ok", "markdown": "caf\u00e9"}'.encode("latin-1"), "not UTF-8"),
    "nested": (b'{"page": 2, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
    "wrong page": (b'{"page": 3, "status": "ok"}', "wrong shape: 'page' is not 2"),
    "page as text": (b'{"page": "2", "status": "ok"}', "wrong shape: 'page' is not 2"),
    "no status": (b'{"page": 2}', "wrong shape: 'status' missing or not a string"),
    "figures wrong type": (b'{"page": 2, "status": "ok", "figures": {"name": "x"}}',
                           "wrong shape: 'figures' is not a list of objects"),
}


def _checkpointed(out: Path) -> files.DocPaths:
    paths = files.OutputLayout(out).paths_for("a/doc.pdf")
    files.save_checkpoint(paths, KEY, PAGE1)
    files.save_checkpoint(paths, KEY, PAGE2)
    assert files.load_checkpoints(paths, KEY) == {1: PAGE1, 2: PAGE2}
    return paths


@pytest.mark.parametrize("kind", list(DAMAGED_CHECKPOINTS))
def test_a_damaged_page_checkpoint_is_redone_with_one_warning(out, caplog, kind):
    paths = _checkpointed(out)
    data, reason = DAMAGED_CHECKPOINTS[kind]
    (paths.checkpoints / "p000002.json").write_bytes(data)
    with caplog.at_level(logging.WARNING, logger="ocrprune"):
        assert files.load_checkpoints(paths, KEY) == {1: PAGE1}
    assert warnings_of(caplog) == [
        f"{paths.checkpoints / 'p000002.json'}: damaged page checkpoint ignored ({reason}); page 2 "
        "will be converted again"
    ]
    files.save_checkpoint(paths, KEY, PAGE2)  # the redone page replaces it
    assert files.load_checkpoints(paths, KEY) == {1: PAGE1, 2: PAGE2}


def test_a_page_checkpoint_larger_than_the_limit_is_skipped(out, caplog, monkeypatch):
    paths = _checkpointed(out)
    limit = 200
    sizes = {p.name: p.stat().st_size for p in paths.checkpoints.iterdir()}
    assert sizes["key.json"] < limit and sizes["p000001.json"] < limit < sizes["p000002.json"]
    monkeypatch.setattr(files, "CHECKPOINT_MAX_BYTES", limit)
    with caplog.at_level(logging.WARNING, logger="ocrprune"):
        assert files.load_checkpoints(paths, KEY) == {1: PAGE1}
    assert warnings_of(caplog) == [
        f"{paths.checkpoints / 'p000002.json'}: damaged page checkpoint ignored (larger than 200 "
        "bytes); page 2 will be converted again"
    ]


def test_a_fifo_or_linked_page_checkpoint_is_skipped_at_once_and_never_read(out, outside, caplog):
    paths = _checkpointed(out)
    (paths.checkpoints / "p000002.json").unlink()
    os.mkfifo(paths.checkpoints / "p000002.json")
    (outside / "p.json").write_text(json.dumps(PAGE1 | {"page": 3}))
    (paths.checkpoints / "p000003.json").symlink_to(outside / "p.json")
    with caplog.at_level(logging.WARNING, logger="ocrprune"):
        assert returns_within(1, lambda: files.load_checkpoints(paths, KEY)) == {1: PAGE1}
    assert warnings_of(caplog) == [
        f"{paths.checkpoints / 'p000002.json'}: damaged page checkpoint ignored (a FIFO, not a regular "
        "file); page 2 will be converted again",
        f"{paths.checkpoints / 'p000003.json'}: damaged page checkpoint ignored (a symbolic link, not a "
        "regular file; never read); page 3 will be converted again",
    ]
    files.clear_checkpoints(paths)
    assert not paths.checkpoints.exists()
    (outside / "p.json").unlink()
    assert untouched(outside)


@pytest.mark.parametrize("data,reason", [(b"{not json", "not JSON"), (b"[]", "a JSON list, not an object"),
                                          (b"[" * 100_000, "nested too deeply")])
def test_a_damaged_checkpoint_key_discards_the_documents_checkpoints_with_one_warning(out, caplog, data, reason):
    paths = _checkpointed(out)
    (paths.checkpoints / "key.json").write_bytes(data)
    with caplog.at_level(logging.WARNING, logger="ocrprune"):
        assert files.load_checkpoints(paths, KEY) == {}
    assert warnings_of(caplog) == [
        f"{paths.checkpoints / 'key.json'}: damaged page checkpoint key ignored ({reason}); the "
        "document's saved pages are discarded"
    ]
    assert not paths.checkpoints.exists()


def test_checkpoints_of_another_key_are_discarded_silently(out, caplog):
    paths = _checkpointed(out)
    with caplog.at_level(logging.WARNING, logger="ocrprune"):
        assert files.load_checkpoints(paths, KEY | {"model": "other"}) == {}
    assert warnings_of(caplog) == [] and not paths.checkpoints.exists()


# ---- item 9: outputs of formats no longer written ---------------------------------------------------


def test_a_rewrite_without_json_removes_the_old_json_and_stale_figures_only(out, outside):
    paths = write_doc(out)
    sibling = write_doc(out, "a/other.pdf")
    (paths.images_dir / "mine.txt").write_text("the user's")  # not listed: never removed
    final = files.write_document(paths, "# md only\n", None, [],
                                 files.manifest_for("sha-in", OPTIONS, "model", None, ["ok"]))
    assert final["formats"] == {"md": "doc.pdf.md"} and sorted(final["outputs"]) == ["doc.pdf.md"]
    assert not paths.json.exists() and not (paths.images_dir / FIG.name).exists()
    assert (paths.images_dir / "mine.txt").read_text() == "the user's"
    assert paths.md.read_text() == "# md only\n"
    assert sibling.json.exists() and files.is_done(sibling, KEY, ["md", "json"]) is True
    assert untouched(outside)


def test_an_old_output_replaced_by_a_link_is_unlinked_never_followed(out, outside):
    paths = write_doc(out)
    paths.json.unlink()
    paths.json.symlink_to(outside / "secret.txt")
    files.write_document(paths, "# md\n", None, [FIG], files.manifest_for("sha-in", OPTIONS, "model", None, ["ok"]))
    assert not paths.json.is_symlink() and not paths.json.exists()
    assert untouched(outside)


def test_temps_of_dead_writers_are_swept_inside_the_document_folder(out):
    paths = write_doc(out, "c/doc.pdf")
    stale = paths.md.parent / ".doc.pdf.md.999999999.0badc0de.tmp"
    stale.write_text("half")
    files._SWEPT.discard(str(paths.md.parent))
    write_doc(out, "c/doc.pdf")
    assert not stale.exists()


# ---- end to end: the real CLI with the tiny model, and pipeline.run --------------------------------


def test_cli_convert_with_fewer_formats_removes_the_old_json_and_a_skip_only_run_removes_nothing(tmp_path):
    make_pdf(tmp_path / "doc.pdf", pages=1)
    out = tmp_path / "out"
    base = ["convert", str(tmp_path / "doc.pdf"), "--out", str(out), "--base", str(tmp_path), *CLI]
    first = CliRunner().invoke(app, [*base, "--format", "md,json"])
    assert first.exit_code in (0, 3), first.output  # 3: the tiny model may hit the token cap
    assert (out / "doc.pdf.json").is_file() and (out / "doc.pdf.md").is_file()
    second = CliRunner().invoke(app, [*base, "--format", "md", "--keep", "0.4"])
    assert second.exit_code in (0, 3), second.output
    assert sorted(p.name for p in out.iterdir()) == [".ocrprune", "doc.pdf.md", "pages.csv", "report.json"]
    manifest = json.loads((out / ".ocrprune/doc.pdf.manifest.json").read_text())
    assert manifest["formats"] == {"md": "doc.pdf.md"} and list(manifest["outputs"]) == ["doc.pdf.md"]
    stamp = (out / "doc.pdf.md").stat().st_mtime_ns
    (out / "doc.pdf.json").write_text("the user's own file now")
    third = CliRunner().invoke(app, [*base, "--format", "md", "--keep", "0.4"])
    assert third.exit_code == second.exit_code, third.output
    assert "skipped 1 document(s)" in third.output
    assert (out / "doc.pdf.md").stat().st_mtime_ns == stamp
    assert (out / "doc.pdf.json").read_text() == "the user's own file now"


@pytest.mark.parametrize("planted", [".ocrprune/lock", ".ocrprune/runs", ".ocrprune"])
def test_cli_a_link_planted_for_the_runs_own_files_stops_with_exit_6_before_anything(tmp_path, outside, planted):
    make_pdf(tmp_path / "doc.pdf", pages=1)
    out = tmp_path / "out"
    (out / ".ocrprune").mkdir(parents=True)
    target = outside / "secret.txt" if planted.endswith("lock") else outside
    if planted == ".ocrprune":
        (out / ".ocrprune").rmdir()
    (out / planted).symlink_to(target)
    result = CliRunner().invoke(app, ["convert", str(tmp_path / "doc.pdf"), "--out", str(out), *CLI])
    assert result.exit_code == 6, result.output
    root = out.resolve()
    refused = [line for line in result.output.splitlines() if "refusing" in line]
    assert len(refused) == 1 and refused[0].endswith(link_message(root / planted, target, root)), refused
    assert "Traceback" not in result.output
    assert untouched(outside)
    assert not (out / "doc.pdf.md").exists() and not (out / "report.json").exists()


@pytest.mark.slow  # a real process (torch imported); fast: test_a_fifo_manifest_is_ignored_at_once_and_replaced
def test_cli_a_fifo_manifest_neither_hangs_nor_stops_the_run(tmp_path):
    make_pdf(tmp_path / "doc.pdf", pages=1)
    out = tmp_path / "out"
    (out / ".ocrprune").mkdir(parents=True)
    os.mkfifo(out / ".ocrprune" / "doc.pdf.manifest.json")
    result = subprocess.run(
        [sys.executable, "-m", "ocrprune", "convert", "doc.pdf", "--out", "out", *CLI],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
        env=os.environ | {"PYTHONPATH": str(REPO / "src")},
    )
    assert result.returncode in (0, 3), result.stderr
    manifest = out.resolve() / ".ocrprune/doc.pdf.manifest.json"
    damaged = [line for line in result.stderr.splitlines() if "damaged" in line]
    assert len(damaged) == 1 and damaged[0].endswith(
        f"{manifest}: damaged manifest ignored (a FIFO, not a regular file); the document "
        "will be converted again"
    ), damaged
    assert "Traceback" not in result.stderr
    assert manifest.is_file() and json.loads(manifest.read_text())["schema"] == "ocrprune.manifest/1"
    assert (out / "doc.pdf.md").is_file()


def test_a_deeply_nested_manifest_and_a_truncated_checkpoint_are_redone_not_a_traceback(tmp_path, caplog):
    pdf = pdf_with_sizes(tmp_path / "doc.pdf", 2)
    assert int(run_scripted(tmp_path, [pdf], ScriptedEngine({2: ("length", "cut", [3])})).exit_code) == 3
    state = tmp_path / "out" / ".ocrprune"
    (state / "doc.pdf.manifest.json").write_bytes(b"[" * 100_000 + b"]" * 100_000)
    (state / "doc.pdf.pages" / "p000001.json").write_bytes(b'{"page": 1, "sta')
    engine = ScriptedEngine()
    with caplog.at_level(logging.WARNING, logger="ocrprune"):
        outcome = run_scripted(tmp_path, [pdf], engine)
    assert int(outcome.exit_code) == 3
    assert engine.seen == [1]  # page 1's checkpoint was damaged; page 2's (capped) is reused
    assert [m for m in warnings_of(caplog) if "damaged" in m] == [
        f"{state.resolve() / 'doc.pdf.manifest.json'}: damaged manifest ignored (nested too deeply); "
        "the document will be converted again",
        f"{state.resolve() / 'doc.pdf.pages/p000001.json'}: damaged page checkpoint ignored "
        "(truncated); page 1 will be converted again",
    ]
    assert json.loads((state / "doc.pdf.manifest.json").read_text())["page_statuses"] == ["ok", "length"]


# The statuses a manifest records decide `--retry-failed` (this pinned `files.has_failed_pages`,
# which only tests used; the run's own decision is pinned instead).


def test_retry_failed_redoes_a_document_whose_manifest_records_a_failed_page_only(tmp_path):
    good = pdf_with_sizes(tmp_path / "good.pdf", 1)
    bad = pdf_with_sizes(tmp_path / "bad.pdf", 3)
    assert int(run_scripted(tmp_path, [good], ScriptedEngine()).exit_code) == 0
    assert int(run_scripted(tmp_path, [bad], ScriptedEngine({2: ("repetition", "x", [3])})).exit_code) == 3
    state = tmp_path / "out" / ".ocrprune"
    assert json.loads((state / "good.pdf.manifest.json").read_text())["page_statuses"] == ["ok"]
    assert json.loads((state / "bad.pdf.manifest.json").read_text())["page_statuses"] == ["ok", "repetition", "ok"]
    engine = ScriptedEngine()
    outcome = run_scripted(tmp_path, [good, bad], engine, retry_failed=True)
    assert engine.seen == [2]  # good.pdf (every page ok) is skipped; bad.pdf redoes its failed page
    assert {Path(d.source).name: d.skipped for d in outcome.docs} == {"good.pdf": True, "bad.pdf": False}


@pytest.mark.parametrize("manifest", ["missing", "damaged"])
def test_retry_failed_converts_a_document_without_a_readable_manifest(tmp_path, manifest):
    good = pdf_with_sizes(tmp_path / "good.pdf", 1)
    assert int(run_scripted(tmp_path, [good], ScriptedEngine()).exit_code) == 0
    path = tmp_path / "out" / ".ocrprune" / "good.pdf.manifest.json"
    if manifest == "missing":
        path.unlink()
    else:
        path.write_bytes(b"<html>not a manifest</html>\n")
    engine = ScriptedEngine()
    outcome = run_scripted(tmp_path, [good], engine, retry_failed=True)
    assert engine.seen == [1]  # not done: converted again, not skipped as failed or as done
    assert [d.skipped for d in outcome.docs] == [False] and int(outcome.exit_code) == 0


def _two_docs(tmp_path: Path) -> tuple[Path, Path]:
    return pdf_with_sizes(tmp_path / "a" / "one.pdf", 1), pdf_with_sizes(tmp_path / "b" / "two.pdf", 1)


def _by_name(outcome) -> dict[str, str | None]:
    return {Path(d.source).name: d.error_kind for d in outcome.docs}


def test_a_symlinked_document_folder_costs_that_document_and_the_rest_converts(tmp_path, outside):
    one, two = _two_docs(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a").symlink_to(outside, target_is_directory=True)
    outcome = run_scripted(tmp_path, [one, two], ScriptedEngine())
    assert int(outcome.exit_code) == 3
    assert _by_name(outcome) == {"one.pdf": "unsafe_output", "two.pdf": None}
    assert (tmp_path / "out" / "b" / "two.pdf.md").is_file()
    assert untouched(outside)


def test_a_manifest_listing_a_path_outside_costs_that_document_and_the_rest_converts(tmp_path, outside):
    one, two = _two_docs(tmp_path)
    assert int(run_scripted(tmp_path, [one], ScriptedEngine()).exit_code) == 0
    manifest_path = tmp_path / "out" / "a" / ".ocrprune" / "one.pdf.manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["outputs"]["../../outside/secret.txt"] = {"size": len(SECRET), "sha256": "0" * 64}
    manifest_path.write_text(json.dumps(manifest))
    outcome = run_scripted(tmp_path, [one, two], ScriptedEngine())
    assert int(outcome.exit_code) == 3
    assert _by_name(outcome) == {"one.pdf": "unsafe_output", "two.pdf": None}
    assert (tmp_path / "out" / "b" / "two.pdf.md").is_file()
    assert untouched(outside)


def test_a_checkpoint_naming_a_figure_outside_costs_that_document_and_the_rest_converts(tmp_path, outside):
    one, two = _two_docs(tmp_path)
    paths = files.OutputLayout(tmp_path / "out").paths_for("a/one.pdf")
    first = run_scripted(tmp_path, [one], ScriptedEngine({1: ("length", "cut", [3])}))
    assert int(first.exit_code) == 3
    record = json.loads((paths.checkpoints / "p000001.json").read_text())
    record["figures"] = [{"name": "../../../outside/x.jpg", "box": [0, 0, 1, 1], "jpeg": ""}]
    (paths.checkpoints / "p000001.json").write_text(json.dumps(record))
    paths.manifest.unlink()  # a crash before the manifest: the document is pending, its page reused
    outcome = run_scripted(tmp_path, [one, two], ScriptedEngine())
    assert int(outcome.exit_code) == 3
    assert _by_name(outcome) == {"one.pdf": "unsafe_output", "two.pdf": None}
    assert (tmp_path / "out" / "b" / "two.pdf.md").is_file()
    assert untouched(outside)


def test_a_case_variant_listed_in_a_manifest_is_accepted_but_never_deleted(out):
    paths = write_doc(out)
    (paths.md.parent / "DOC.pdf.md").write_text("another document's output")
    manifest = json.loads(paths.manifest.read_text())
    manifest["outputs"]["DOC.pdf.md"] = {"size": 1, "sha256": "0" * 64}
    paths.manifest.write_text(json.dumps(manifest))
    assert files.read_manifest(paths) is not None  # a case-insensitive disk could fold these
    files.write_document(paths, "# md\n", None, [], files.manifest_for("sha-in", OPTIONS, "model", None, ["ok"]))
    assert (paths.md.parent / "DOC.pdf.md").read_text() == "another document's output"
    assert not paths.json.exists()
