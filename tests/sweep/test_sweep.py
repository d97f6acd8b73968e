"""`ocrprune.sweep.run`: edit distance, recommendation, and a real run on the tiny model (CPU, seconds)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from docgen import make_pdf

from ocrprune.config import GenerationSettings, PruneConfig, RasterConfig
from ocrprune.errors import ExitCode
from ocrprune.sweep.run import (
    SettingRow,
    SweepConfig,
    levenshtein,
    normalized_edit_distance,
    parse_keeps,
    recommend,
    render_sweep_table,
    run_sweep,
)


def _dp_levenshtein(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb))
        previous = current
    return previous[-1]


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("kitten", "sitting", 3 / 7),
        ("sitting", "kitten", 3 / 7),
        ("", "", 0.0),
        ("", "abc", 1.0),
        ("abc", "", 1.0),
        ("same text", "same text", 0.0),
        ("flaw", "lawn", 2 / 4),
        ("ab", "ba", 2 / 2),
        ("<td>é</td>", "<td>e</td>", 1 / 10),
    ],
)
def test_normalized_edit_distance_matches_hand_computed_pairs(
    a: str, b: str, expected: float
) -> None:
    assert normalized_edit_distance(a, b) == pytest.approx(expected, abs=1e-12)


def test_levenshtein_agrees_with_the_textbook_dynamic_programme() -> None:
    rng = random.Random(7)
    for _ in range(500):
        a = "".join(rng.choice("ab c\né") for _ in range(rng.randint(0, 70)))
        b = "".join(rng.choice("ab c\né") for _ in range(rng.randint(0, 70)))
        assert levenshtein(a, b) == _dp_levenshtein(a, b)


def test_parse_keeps_reads_numbers_and_auto_and_drops_duplicates() -> None:
    assert parse_keeps("1, 0.8,auto,0.80,AUTO") == (1.0, 0.8, "auto")
    for bad in ("0", "1.5", "x", " , "):
        with pytest.raises(ValueError):
            parse_keeps(bad)


def _row(keep: str, kept_share: float, fidelity: float, pages: int = 10) -> SettingRow:
    return SettingRow(
        keep=keep,
        pages=pages,
        failed=0,
        not_ok=0,
        visual_total=1000,
        visual_kept=int(1000 * kept_share),
        kept_share=kept_share,
        mean_ratio=kept_share,
        prompt_tokens=0,
        prompt_tokens_unpruned=0,
        generated_tokens=0,
        prefill_ms=1.0,
        total_ms=1.0,
        prefill_speedup=1.0,
        total_speedup=1.0,
        fidelity=fidelity,
        exact_match=0.0,
    )


ROWS = [
    _row("1", 1.0, 1.0),
    _row("0.8", 0.8, 0.995),
    _row("0.6", 0.6, 0.981),
    _row("0.4", 0.4, 0.93),
    _row("auto", 0.7, 0.99),
]


@pytest.mark.parametrize(
    ("threshold", "expected"),
    [(0.98, "0.6"), (0.981, "0.6"), (0.985, "auto"), (0.995, "0.8"), (0.999, "1"), (0.9, "0.4")],
)
def test_recommend_picks_the_fewest_tokens_whose_fidelity_reaches_the_threshold(
    threshold: float, expected: str
) -> None:
    assert recommend(ROWS, threshold) == expected


def test_recommend_returns_none_when_no_setting_qualifies_and_ignores_rows_without_pages() -> None:
    assert recommend([_row("0.4", 0.4, 0.5), _row("0.2", 0.2, 1.0, pages=0)], 0.98) is None
    assert recommend([], 0.98) is None


def test_importing_the_sweep_module_loads_neither_torch_nor_pymupdf() -> None:
    code = "import sys, ocrprune.sweep.run; print(sorted({'torch', 'transformers', 'pymupdf'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_sweep_with_no_usable_input_writes_the_failures_without_loading_a_model(
    tmp_path: Path,
) -> None:
    empty = tmp_path / "empty.pdf"
    empty.write_bytes(b"")

    def no_model():
        raise AssertionError("the model must not load when there is nothing to compare")

    report = run_sweep(_config(tmp_path, (str(empty),)), engine_factory=no_model)
    assert report.exit_code == ExitCode.NOTHING_SUCCEEDED
    assert report.rows == () and report.recommended is None
    assert [(s.source, s.reason.split(":")[0]) for s in report.skipped] == [(str(empty), "empty")]
    data = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert data["pages_compared"] == 0 and data["skipped"][0]["reason"].startswith("empty")
    assert "recommended: none" in render_sweep_table(report)


def test_sweep_config_rejects_bad_values(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="threshold"):
        SweepConfig(inputs=("x",), out=tmp_path, threshold=1.5)
    with pytest.raises(ValueError):
        SweepConfig(inputs=("x",), out=tmp_path, keeps=(0.0,))
    assert SweepConfig(inputs=("x",), out=tmp_path, keeps=(0.4, "auto")).labels == [
        "1",
        "0.4",
        "auto",
    ]


# ---- a real run on the tiny model -----------------------------------------------------------------


@pytest.fixture
def counted_encoder(tiny_loaded, monkeypatch):
    """Count calls to the vision encoder of the shared tiny model."""
    calls = {"n": 0}
    original = tiny_loaded.model.model.get_image_features

    def counting(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(tiny_loaded.model.model, "get_image_features", counting)
    return calls


def _factory(tiny_loaded):
    from ocrprune.runtime.hf.engine import Engine

    settings = GenerationSettings(mode="tiny", max_new_tokens=8)
    return lambda: Engine(tiny_loaded, settings, PruneConfig(keep=1.0))


def _config(tmp_path: Path, inputs: tuple[str, ...], batch_size: int = 1) -> SweepConfig:
    return SweepConfig(
        inputs=inputs,
        out=tmp_path / "out",
        keeps=(1.0, 0.4),
        generation=GenerationSettings(mode="tiny", max_new_tokens=8),
        raster=RasterConfig(dpi=72),
        batch_size=batch_size,
    )


def test_sweep_of_two_pages_compares_each_setting_against_the_unpruned_reference(
    tmp_path: Path, tiny_loaded, counted_encoder
) -> None:
    pdf = make_pdf(tmp_path / "doc.pdf", pages=2, text="Page {n}: pruning sweep")
    report = run_sweep(_config(tmp_path, (str(pdf),)), engine_factory=_factory(tiny_loaded))

    assert counted_encoder["n"] == 2  # once per page, not once per page and setting
    assert [r.keep for r in report.rows] == ["1", "0.4"]
    ref, pruned = report.rows
    assert (ref.pages, ref.fidelity, ref.exact_match, ref.prefill_speedup, ref.kept_share) == (
        2,
        1.0,
        1.0,
        1.0,
        1.0,
    )
    # Tiny mode: an 8 x 8 grid, N = 64 visual tokens per page, K = floor(64 * 0.4) = 25.
    assert (pruned.visual_total, pruned.visual_kept) == (128, 50)
    assert pruned.prompt_tokens < ref.prompt_tokens
    assert pruned.prompt_tokens_unpruned == ref.prompt_tokens_unpruned == ref.prompt_tokens
    assert 0.0 <= pruned.fidelity <= 1.0 and pruned.failed == 0
    assert report.pages_compared == 2 and report.skipped == () and report.exit_code == ExitCode.OK

    data = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert data["schema"] == "ocrprune.sweep/1"
    assert data["dummy_model"] is True and data["mode"] == "tiny" and data["threshold"] == 0.98
    assert [s["keep"] for s in data["settings"]] == ["1", "0.4"]
    assert data["settings"][0]["fidelity"] == 1.0 and data["settings"][0]["exact_match"] == 1.0
    assert data["recommended"] == report.recommended
    assert [(p["source"], p["page"]) for p in data["pages"]] == [(str(pdf), 1), (str(pdf), 2)]
    assert (tmp_path / "out" / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["sweep.json", "sweep.png"]

    table = render_sweep_table(report)
    assert "keep" in table and "\n1 " in table and "\n0.4 " in table
    assert "tiny-random model" in table


def test_sweep_batches_encode_once_per_batch(tmp_path: Path, tiny_loaded, counted_encoder) -> None:
    pdf = make_pdf(tmp_path / "doc.pdf", pages=2)
    report = run_sweep(
        _config(tmp_path, (str(pdf),), batch_size=2), engine_factory=_factory(tiny_loaded)
    )
    assert counted_encoder["n"] == 1
    assert report.pages_compared == 2


def test_sweep_counts_failed_pages_instead_of_dropping_them(tmp_path: Path, tiny_loaded) -> None:
    pdf = make_pdf(tmp_path / "doc.pdf", pages=2)
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"%PDF-1.4\nnot really a pdf")
    engine = _factory(tiny_loaded)()
    decode = engine.decode
    pruned_calls = {"n": 0}

    def flaky(encoded, prune=None):
        if prune is not None and prune.keep == 0.4:
            pruned_calls["n"] += 1
            if pruned_calls["n"] == 2:
                raise RuntimeError("injected failure on page 2 at keep 0.4")
        return decode(encoded, prune=prune)

    engine.decode = flaky
    report = run_sweep(_config(tmp_path, (str(pdf), str(broken))), engine_factory=lambda: engine)

    assert report.pages_compared == 2
    assert [(s.source, s.reason.split(":")[0]) for s in report.skipped] == [
        (str(broken), "corrupt")
    ]
    ref, pruned = report.rows
    assert (ref.failed, pruned.failed, pruned.pages) == (0, 1, 2)
    assert pruned.fidelity <= 0.5 and pruned.exact_match <= 0.5
    assert pruned.visual_total == 64  # only the page that ran is summed
    assert report.exit_code == ExitCode.PARTIAL
    data = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert data["pages"][1]["settings"]["0.4"]["status"] == "model_error"
    assert "injected failure" in data["pages"][1]["settings"]["0.4"]["error"]
