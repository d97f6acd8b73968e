"""inputs: output names are stable (input path relative to a fixed base), safe and injective."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path, PurePosixPath

import pytest
from docgen import make_pdf
from PIL import Image

from ocrprune.inputs import (
    MAX_NAME_BYTES,
    RESERVED_TOP_LEVEL,
    Document,
    expand_inputs,
    fallback_rel,
    safe_component,
)
from ocrprune.writers.files import OutputLayout


def rels(docs: list[Document]) -> list[str]:
    return [str(d.rel) for d in docs]


def h8(data: str | bytes) -> str:
    return hashlib.sha256(os.fsencode(data) if isinstance(data, str) else data).hexdigest()[:8]


def make_image(path: Path, fmt: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), "white").save(path, format=fmt)
    return path


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


# -- A: stable output paths ---------------------------------------------------------------------


def test_same_input_path_gets_the_same_rel_whatever_else_is_in_the_run(cwd: Path) -> None:
    # Issue #8 item 5: two nights, `b.gif` in both lists; it used to move from 2025/b to b.
    make_image(cwd / "inbox/2024/a.bmp", "BMP")
    make_image(cwd / "inbox/2025/b.gif", "GIF")
    make_image(cwd / "inbox/2025/c.jpg", "JPEG")
    night1, errors1 = expand_inputs(["-"], stdin=io.StringIO("inbox/2024/a.bmp\ninbox/2025/b.gif\n"))
    night2, errors2 = expand_inputs(["-"], stdin=io.StringIO("inbox/2025/b.gif\ninbox/2025/c.jpg\n"))
    assert errors1 == errors2 == []
    assert rels(night1) == ["inbox/2024/a.bmp", "inbox/2025/b.gif"]
    assert rels(night2) == ["inbox/2025/b.gif", "inbox/2025/c.jpg"]


def test_files_found_in_folders_are_named_by_their_own_path_not_the_folder_argument(
    cwd: Path,
) -> None:
    make_image(cwd / "inbox/2025/b.gif", "GIF")
    by_folder, _ = expand_inputs(["inbox/2025"])
    by_parent, _ = expand_inputs(["inbox"])
    by_absolute, _ = expand_inputs([str(cwd / "inbox/2025")])
    by_file, _ = expand_inputs(["./inbox//2025/b.gif"])
    assert rels(by_folder) == rels(by_parent) == rels(by_absolute) == rels(by_file) == [
        "inbox/2025/b.gif"
    ]


def test_base_argument_sets_what_names_are_relative_to(cwd: Path) -> None:
    make_image(cwd / "inbox/2025/b.gif", "GIF")
    docs, _ = expand_inputs(["inbox/2025/b.gif"], base=cwd / "inbox")
    assert rels(docs) == ["2025/b.gif"]
    docs, _ = expand_inputs(["inbox/2025/b.gif"], base=Path("inbox/2025"))
    assert rels(docs) == ["b.gif"]


def test_paths_outside_the_base_map_to_outside_and_their_absolute_components(
    cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_pdf(cwd / "data/x.pdf")
    home = cwd / "home/u"
    home.mkdir(parents=True)
    expected = str(PurePosixPath("_outside", *cwd.parts[1:], "data/x.pdf"))
    absolute, _ = expand_inputs([str(cwd / "data/x.pdf")], base=home)
    dotdot, _ = expand_inputs([str(home / "../../data/x.pdf")], base=home)
    monkeypatch.chdir(home)
    escaping, _ = expand_inputs(["../../data/x.pdf"])  # base None: the current folder
    assert rels(absolute) == rels(dotdot) == rels(escaping) == [expected]
    # The converted file's output name (was `output_rel`, removed: only tests used it).
    paths = OutputLayout(cwd / "out").paths_for(absolute[0].rel)
    assert paths.md == cwd / "out" / PurePosixPath(expected).parent / "x.pdf.md"


def test_a_top_level_outside_folder_inside_the_base_cannot_pose_as_an_outside_path(
    cwd: Path,
) -> None:
    make_pdf(cwd / "_outside/data/x.pdf")
    docs, _ = expand_inputs(["_outside/data/x.pdf"])
    assert rels(docs) == [f"_outside~{h8('_outside')}/data/x.pdf"]


# -- B: component safety ------------------------------------------------------------------------


def test_safe_names_are_kept_and_unsafe_ones_get_a_hash_of_their_original_bytes(
    cwd: Path,
) -> None:
    for name in ("what?.pdf", "what_.pdf", "a~b.pdf", "a_b.pdf", "CON.pdf", "漢字 ملف.pdf"):
        make_pdf(cwd / "d" / name)
    docs, errors = expand_inputs(["d"])
    assert errors == []
    assert {d.path.name: str(d.rel) for d in docs} == {
        "CON.pdf": f"d/_CON.pdf~{h8('CON.pdf')}",
        "a_b.pdf": "d/a_b.pdf",
        "a~b.pdf": f"d/a_b.pdf~{h8('a~b.pdf')}",
        "what?.pdf": f"d/what_.pdf~{h8('what?.pdf')}",
        "what_.pdf": "d/what_.pdf",
        "漢字 ملف.pdf": "d/漢字 ملف.pdf",
    }


def test_non_utf8_file_name_is_expanded_and_named_losslessly(cwd: Path) -> None:
    raw = b"caf\xe9.pdf"  # Latin-1, not valid UTF-8
    os.rename(make_pdf(cwd / "d/tmp.pdf"), b"d/" + raw)
    make_pdf(cwd / "d/caf_.pdf")
    docs, errors = expand_inputs(["d"])
    assert errors == []
    assert [os.fsencode(d.path.name) for d in docs] == [b"caf_.pdf", raw]
    assert rels(docs) == ["d/caf_.pdf", f"d/caf_.pdf~{h8(raw)}"]
    assert all(str(d.rel).encode("utf-8") for d in docs)  # rels are always valid text


def test_long_names_are_truncated_with_room_for_the_writer_suffixes(cwd: Path) -> None:
    ascii_name = "a" * 111 + ".pdf"  # 115 bytes: under 120, but `_images` would not fit
    wide_name = "é" * 100 + ".pdf"  # 204 bytes
    fits = "b" * 109 + ".pdf"  # 113 bytes: kept
    for name in (ascii_name, wide_name, fits):
        make_pdf(cwd / name)
    docs, _ = expand_inputs([ascii_name, wide_name, fits])
    assert rels(docs) == ["a" * 104 + "~" + h8(ascii_name), "é" * 52 + "~" + h8(wide_name), fits]
    for doc in docs:
        assert len(doc.rel.name.encode("utf-8")) + len("_images") <= 120
    assert MAX_NAME_BYTES == 113


def test_long_folder_names_are_hashed_too(cwd: Path) -> None:
    folder = "f" * 130
    make_pdf(cwd / folder / "x.pdf")
    docs, _ = expand_inputs([folder])
    assert rels(docs) == ["f" * 111 + "~" + h8(folder) + "/x.pdf"]


def test_top_level_report_and_pages_documents_cannot_overwrite_the_run_report(cwd: Path) -> None:
    # `report` would write report.json, the run report; `report.pdf` next to `report_doc.pdf`
    # used to be renamed onto report_doc (#9.5).
    for name in ("report", "pages", "report.pdf", "report_doc.pdf", "sub/report", "Report"):
        make_pdf(cwd / name)
    make_pdf(cwd / "report.json/a.pdf")
    args = ["report", "pages", "report.pdf", "report_doc.pdf", "sub/report", "report.json/a.pdf"]
    docs, errors = expand_inputs(args)
    assert errors == []
    assert rels(docs) == [
        f"report~{h8('report')}",
        f"pages~{h8('pages')}",
        "report.pdf",
        "report_doc.pdf",
        "sub/report",
        f"report.json~{h8('report.json')}/a.pdf",
    ]
    upper, _ = expand_inputs(["Report"])  # report.json on a case-insensitive disk
    assert rels(upper) == [f"Report~{h8('Report')}"]
    assert RESERVED_TOP_LEVEL == frozenset({"report.json", "pages.csv", ".ocrprune", "_outside"})


def test_hidden_and_manifest_folder_names_are_never_kept(cwd: Path) -> None:
    make_pdf(cwd / ".ocrprune/x.pdf")
    make_pdf(cwd / "a/.ocrprune/y.pdf")
    docs, _ = expand_inputs([".ocrprune/x.pdf", "a/.ocrprune/y.pdf"])
    assert rels(docs) == [
        f"_ocrprune~{h8('.ocrprune')}/x.pdf",
        f"a/_ocrprune~{h8('.ocrprune')}/y.pdf",
    ]


def test_case_twins_in_one_run_the_later_one_falls_back_deterministically(cwd: Path) -> None:
    make_pdf(cwd / "d/A.pdf")
    make_pdf(cwd / "e/a.pdf")
    make_pdf(cwd / "D/a.pdf")
    tag_a = h8(str(cwd / "e/a.pdf"))
    first, _ = expand_inputs(["d/A.pdf", "D/a.pdf", "e/a.pdf"])
    again, _ = expand_inputs(["d/A.pdf", "D/a.pdf", "e/a.pdf"])
    assert rels(first) == rels(again) == ["d/A.pdf", f"D/a.pdf~{h8(str(cwd / 'D/a.pdf'))}", "e/a.pdf"]
    swapped, _ = expand_inputs(["D/a.pdf", "d/A.pdf"])
    assert rels(swapped) == ["D/a.pdf", f"d/A.pdf~{h8(str(cwd / 'd/A.pdf'))}"]
    assert tag_a != h8(str(cwd / "D/a.pdf"))


def test_document_whose_markdown_would_be_another_documents_folder_falls_back(cwd: Path) -> None:
    make_pdf(cwd / "d/x")  # a PDF without extension: writes d/x.md
    make_pdf(cwd / "d/x.md/a.pdf")  # needs the folder d/x.md
    forward, _ = expand_inputs(["d/x", "d/x.md/a.pdf"])
    backward, _ = expand_inputs(["d/x.md/a.pdf", "d/x"])
    tag = h8(str(cwd / "d/x"))
    assert rels(forward) == [f"d/x~{tag}", "d/x.md/a.pdf"]
    assert rels(backward) == ["d/x.md/a.pdf", f"d/x~{tag}"]
    alone, _ = expand_inputs(["d/x"])
    assert rels(alone) == ["d/x"]  # the writer calls fallback_rel if d/x.md is a folder on disk


def test_fallback_rel_appends_a_hash_of_the_absolute_source_path(cwd: Path) -> None:
    rel = PurePosixPath("inbox/a.pdf")
    tag = h8(str(cwd / "inbox/a.pdf"))
    assert fallback_rel(rel, "inbox/a.pdf") == PurePosixPath(f"inbox/a.pdf~{tag}")
    assert fallback_rel(rel, str(cwd / "inbox/./a.pdf")) == PurePosixPath(f"inbox/a.pdf~{tag}")
    long = PurePosixPath("b" * 113)
    assert fallback_rel(long, "/x").name == "b" * 104 + "~" + h8("/x")


def test_safe_component_is_injective_on_names_that_sanitize_alike() -> None:
    names = ["a b", "a\tb", "a\nb", "a/b", "a_b", "a~b", "a\u00e9", "ae\u0301", ".a_b", "a_b."]
    safe = [safe_component(n) for n in names]
    assert len(set(safe)) == len(names)
    assert safe_component("a_b") == "a_b"
    assert safe_component("a\u00e9") == "a\u00e9"  # NFC is kept
    assert safe_component("ae\u0301") == "a\u00e9~" + h8("ae\u0301")  # NFD is not


# -- D: symlinks --------------------------------------------------------------------------------


def test_symlink_and_target_are_one_document_under_the_targets_name(cwd: Path) -> None:
    make_pdf(cwd / "d/a.pdf")
    os.symlink(cwd / "d/a.pdf", cwd / "link.pdf")
    both, errors = expand_inputs(["link.pdf", "d/a.pdf"])
    alone, _ = expand_inputs(["link.pdf"])
    assert errors == []
    assert [(d.display, str(d.rel)) for d in both] == [("link.pdf", "d/a.pdf")]
    assert both[0].path == cwd / "link.pdf"
    assert rels(alone) == ["d/a.pdf"]


def test_symlink_to_a_file_outside_the_base_is_named_after_the_target(cwd: Path) -> None:
    make_pdf(cwd / "elsewhere/t.pdf")
    (cwd / "work").mkdir()
    os.symlink(cwd / "elsewhere/t.pdf", cwd / "work/t-link.pdf")
    docs, _ = expand_inputs(["work/t-link.pdf"], base=cwd / "work")
    assert rels(docs) == [str(PurePosixPath("_outside", *cwd.parts[1:], "elsewhere/t.pdf"))]


def test_files_in_a_symlinked_folder_keep_the_folder_name_as_typed(cwd: Path) -> None:
    make_pdf(cwd / "nas/scans/a.pdf")
    (cwd / "work").mkdir()
    os.symlink(cwd / "nas/scans", cwd / "work/inbox")
    docs, _ = expand_inputs([str(cwd / "work/inbox")], base=cwd / "work")
    assert [(d.display, str(d.rel)) for d in docs] == [(str(cwd / "work/inbox/a.pdf"), "inbox/a.pdf")]
