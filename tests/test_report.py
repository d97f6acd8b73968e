"""Run report numbers (hand-computed), pages.csv, the summary table and exit codes."""

from __future__ import annotations

import pytest

from ocrprune.errors import ExitCode
from ocrprune.records import (
    DocResult,
    KeepInfo,
    PageResult,
    RunInfo,
    RunSummary,
    Timings,
    TokenCounts,
)
from ocrprune.report import (
    build_report,
    exit_code_for,
    pages_csv,
    percentile,
    render_summary,
    summarize,
)

RUN = RunInfo(
    "deepseek-ai/DeepSeek-OCR", "abc", "base", "0.5", "rtprune", "p", "cuda", "bf16", False, "0.1.0"
)


def _page(no: int, status: str, scale: float, kept: int, gen: int, **kw: object) -> PageResult:
    s = scale
    return PageResult(
        no,
        status,  # type: ignore[arg-type]
        tokens=TokenCounts(256, kept, 17, 9, 0, 300, 300 - 256 + kept, gen),
        timings=Timings(10 * s, 1 * s, 20 * s, 2 * s, 30 * s, 100 * s, 163 * s),
        keep=KeepInfo("0.5", kept / 256),
        **kw,  # type: ignore[arg-type]
    )


DOC_OK = DocResult(
    "a.pdf", "a", (_page(1, "ok", 1, 64, 50), _page(2, "ok", 2, 128, 100)), page_count=2
)
DOC_MIXED = DocResult(
    "b.pdf",
    "b",
    (
        _page(1, "repetition", 3, 64, 150),
        PageResult(2, "render_error", timings=Timings(render=5, total=5), error="broken page"),
    ),
    page_count=2,
)
DOC_LOCKED = DocResult("c.pdf", "c", error="password required", error_kind="encrypted")
DOCS = (DOC_OK, DOC_MIXED, DOC_LOCKED)


@pytest.mark.parametrize(
    ("values", "pct", "expected"),
    [
        ([50, 15, 40, 35, 20], 50, 35),  # rank ceil(2.5) = 3 of [15, 20, 35, 40, 50]
        ([50, 15, 40, 35, 20], 95, 50),  # rank ceil(4.75) = 5
        ([50, 15, 40, 35, 20], 0, 15),  # rank clamped to 1
        (list(range(1, 21)), 95, 19),  # rank ceil(19.0) = 19, no float round-up to 20
        (list(range(1, 21)), 50, 10),
        ([7.5], 95, 7.5),
        ([], 50, None),
    ],
)
def test_percentile_is_nearest_rank(
    values: list[float], pct: float, expected: float | None
) -> None:
    assert percentile(values, pct) == expected


def test_summarize_counts_documents_pages_and_failure_kinds() -> None:
    # Changed: a skipped document (converted earlier) counts as ok in the state after the run.
    assert summarize(DOCS, skipped=1, wall_seconds=2.0) == RunSummary(
        documents=4,
        documents_ok=2,
        documents_failed=2,
        documents_skipped=1,
        pages=4,
        pages_by_status=(("ok", 2), ("repetition", 1), ("render_error", 1)),
        failures_by_kind=(("encrypted", 1),),
        wall_seconds=2.0,
        pages_processed=4,
    )


def test_build_report_hand_computed_numbers() -> None:
    report = build_report(DOCS, summarize(DOCS, skipped=1, wall_seconds=2.0), RUN, 1234.56, None)

    assert report["schema"] == "ocrprune.report/1"
    assert report["run"] == {
        "model": "deepseek-ai/DeepSeek-OCR", "revision": "abc", "mode": "base", "keep": "0.5",
        "prune_method": "rtprune", "prompt": "p", "device": "cuda", "dtype": "bf16",
        "dummy_model": False, "engine": "hf", "positions": "gapped", "ocrprune_version": "0.1.0",
    }  # fmt: skip
    assert report["documents"] == {"total": 4, "ok": 2, "failed": 2, "skipped": 1, "skipped_not_ok": 0, "not_reached": 0}
    assert report["pages"] == {
        "total": 4, "processed": 4, "timed": 3,
        "by_status": {"ok": 2, "length": 0, "repetition": 1, "timeout": 0, "render_error": 1, "model_error": 0},
    }  # fmt: skip
    assert report["failures_by_kind"] == {"encrypted": 1}
    assert (report["wall_seconds"], report["pages_per_s"]) == (2.0, 2.0)
    assert (report["generated_tokens"], report["generated_tokens_per_s"]) == (300, 150.0)
    assert report["decode_tokens_per_s"] == 500.0  # 300 tokens / (100 + 200 + 300) ms
    # timed pages (ok, ok, repetition) have scales 1, 2, 3; the render_error page is left out
    assert report["stages_ms"]["render"] == {"p50": 20.0, "p95": 30.0, "mean": 20.0}
    assert report["stages_ms"]["decode"] == {"p50": 200.0, "p95": 300.0, "mean": 200.0}
    assert report["stages_ms"]["total"] == {"p50": 326.0, "p95": 489.0, "mean": 326.0}
    assert report["tokens"] == {
        "visual_total": 768, "visual_kept": 256, "visual_kept_ratio": 0.3333,
        "prompt_unpruned": 900, "prompt": 388, "prompt_ratio": 0.4311,
    }  # fmt: skip
    assert report["memory"] == {"peak_rss_mb": 1234.6, "peak_gpu_mb": None}
    assert (report["interrupted"], report["exit_code"]) == (False, 3)


def test_build_report_with_no_pages_has_no_rates_or_percentiles() -> None:
    report = build_report((), RunSummary(), RUN, None, None)

    assert report["pages_per_s"] is None and report["generated_tokens_per_s"] is None
    assert report["stages_ms"]["prefill"] == {"p50": None, "p95": None, "mean": None}
    assert report["tokens"]["visual_kept_ratio"] is None
    assert report["exit_code"] == 0  # nothing to do


def test_pages_csv_has_one_row_per_page_and_one_per_unopened_document() -> None:
    assert pages_csv(DOCS).splitlines() == [
        "source,page,status,visual_total,visual_kept,prompt_unpruned,prompt,generated,"
        "render_ms,preprocess_ms,encode_ms,prune_ms,prefill_ms,decode_ms,total_ms,keep_ratio,error,skipped",
        "a.pdf,1,ok,256,64,300,108,50,10.00,1.00,20.00,2.00,30.00,100.00,163.00,0.25,,false",
        "a.pdf,2,ok,256,128,300,172,100,20.00,2.00,40.00,4.00,60.00,200.00,326.00,0.5,,false",
        "b.pdf,1,repetition,256,64,300,108,150,30.00,3.00,60.00,6.00,90.00,300.00,489.00,0.25,,false",
        "b.pdf,2,render_error,0,0,0,0,0,5.00,0.00,0.00,0.00,0.00,0.00,5.00,1,broken page,false",
        "c.pdf,,document_error,,,,,,,,,,,,,,encrypted: password required,false",
    ]


def test_summary_renders_headline_numbers_as_plain_text() -> None:
    report = build_report(DOCS, summarize(DOCS, skipped=1, wall_seconds=2.0), RUN, 1234.56, None)

    text = render_summary(report)

    assert "\x1b[" not in text
    for expected in (
        "2 ok, 2 failed, 1 skipped",
        "2 ok, 1 repetition, 1 render_error",
        "failed: encrypted",
        "256/768 (33.3%)",
        "render p50/p95",
        "20.0/30.0 ms",
        "1235 MB",
        "deepseek-ai/DeepSeek-OCR · cuda bf16 · keep 0.5",
    ):
        assert expected in text, expected


def _summary(ok: int = 0, bad: int = 0, **kw: object) -> RunSummary:
    statuses = tuple(x for x in (("ok", ok), ("timeout", bad)) if x[1])
    return RunSummary(pages=ok + bad, pages_by_status=statuses, **kw)  # type: ignore[arg-type]


def test_exit_code_0_when_every_page_is_ok() -> None:
    assert exit_code_for(_summary(ok=3, documents=1, documents_ok=1)) == ExitCode.OK


def test_exit_code_0_when_everything_was_already_done() -> None:
    assert exit_code_for(_summary(documents=2, documents_skipped=2)) == ExitCode.OK


def test_exit_code_3_when_some_pages_failed_and_some_succeeded() -> None:
    assert exit_code_for(_summary(ok=2, bad=1, documents=1, documents_failed=1)) == ExitCode.PARTIAL


def test_exit_code_3_when_a_document_failed_to_open_and_another_succeeded() -> None:
    summary = _summary(ok=2, documents=2, documents_ok=1, documents_failed=1)
    assert exit_code_for(summary) == ExitCode.PARTIAL


def test_exit_code_3_when_skipped_documents_exist_and_a_new_one_failed() -> None:
    summary = _summary(documents=2, documents_failed=1, documents_skipped=1)
    assert exit_code_for(summary) == ExitCode.PARTIAL


def test_exit_code_4_when_every_document_failed() -> None:
    assert exit_code_for(_summary(documents=2, documents_failed=2)) == ExitCode.NOTHING_SUCCEEDED


def test_exit_code_4_when_no_page_produced_output() -> None:
    summary = RunSummary(pages=3, pages_by_status=(("render_error", 2), ("model_error", 1)), documents=1, documents_failed=1)
    assert exit_code_for(summary) == ExitCode.NOTHING_SUCCEEDED


def test_exit_code_3_when_pages_produced_text_but_none_is_ok() -> None:
    # Changed: timed-out or capped pages keep their text, so the run produced something.
    summary = _summary(bad=3, documents=1, documents_failed=1)
    assert exit_code_for(summary) == ExitCode.PARTIAL
    capped = RunSummary(pages=2, pages_by_status=(("length", 2),), documents=1, documents_failed=1)
    assert exit_code_for(capped) == ExitCode.PARTIAL


def test_exit_code_4_when_there_was_no_usable_input() -> None:
    assert exit_code_for(_summary(documents=1, documents_failed=1)) == ExitCode.NOTHING_SUCCEEDED


def test_exit_code_0_when_there_was_nothing_to_do() -> None:
    assert exit_code_for(RunSummary()) == ExitCode.OK


def test_exit_code_3_when_skipped_documents_recorded_failures() -> None:
    summary = _summary(documents=2, documents_skipped=2, documents_failed=1, documents_skipped_not_ok=1)
    assert exit_code_for(summary) == ExitCode.PARTIAL


@pytest.mark.parametrize(("signum", "code"), [(2, 130), (15, 143), (1, 129)])
def test_an_interrupted_run_exits_128_plus_the_signal(signum: int, code: int) -> None:
    assert exit_code_for(_summary(ok=1, documents=1, documents_ok=1, interrupted=True, signal=signum)) == code


def test_exit_code_130_when_interrupted_whatever_else_happened() -> None:
    summary = _summary(ok=3, documents=1, documents_ok=1, interrupted=True)
    assert exit_code_for(summary) == ExitCode.INTERRUPTED
