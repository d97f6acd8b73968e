"""Per-page and per-run report built from records: numbers and text only, no I/O.

* The report describes the state of every document of the run after it: documents converted by
  this run, and documents skipped because an earlier run converted them (`skipped: true` in
  `pages.csv`, with the statuses and figures their manifests recorded). Page counts by status
  and token reduction cover both; throughput, `pages.processed` and stage percentiles cover only
  pages this run converted (not skipped documents, nor pages taken from an earlier run's
  checkpoints on resume or `--retry-failed`).
* Inputs a run never finished (`--fail-fast` stopped it, or a signal did) are counted in
  `documents.not_reached` and listed by name in `not_reached`.
* Stage percentiles use the **nearest-rank** method: p = the value at rank ceil(p/100 * n) of the
  sorted values (1-based), so every reported percentile is a time some page actually took. They
  cover pages that reached the model (`ok`, `length`, `repetition`, `timeout`); `render_error`
  and `model_error` pages have no complete timings and are left out.
* Throughput divides by the run's wall-clock seconds: pages/s counts every page converted by this
  run, generated tokens/s every token it generated. `decode_tokens_per_s` divides the tokens of
  timed pages by their summed decode time.
* Token reduction: `visual_kept / visual_total` (prunable visual tokens only) and
  `prompt / prompt_unpruned`; both are None when the denominator is 0.
* Exit codes follow from the summary alone (`exit_code_for`): 128 + signal when interrupted
  (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP); 0 when there was nothing to do or every page of every
  document is `ok`; 4 when no page produced any output; 3 otherwise (some input or page is not
  `ok`, capped `length` pages and skipped documents with recorded failures included).
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

import ocrprune
from ocrprune.errors import ExitCode
from ocrprune.records import PAGE_STATUSES, DocResult, PageResult, RunInfo, RunSummary

REPORT_SCHEMA = "ocrprune.report/1"
STAGES = ("render", "preprocess", "encode", "prune", "prefill", "decode", "total")
# Pages that reached the model and produced output (text may be cut short).
TIMED_STATUSES = ("ok", "length", "repetition", "timeout")
CSV_COLUMNS = (
    "source",
    "page",
    "status",
    "visual_total",
    "visual_kept",
    "prompt_unpruned",
    "prompt",
    "generated",
    *(f"{stage}_ms" for stage in STAGES),
    "keep_ratio",
    "error",
    "skipped",
)


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile (see the module docstring); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(round(pct * len(ordered) / 100, 9)))
    return ordered[min(rank, len(ordered)) - 1]


def summarize(
    docs: Sequence[DocResult],
    *,
    skipped: int = 0,
    wall_seconds: float = 0.0,
    interrupted: bool = False,
    signal: int = 0,
    not_reached: Sequence[str] = (),
) -> RunSummary:
    """Count a run's documents and pages; a document is failed unless all its pages are ok.

    `docs` holds every document of the run, skipped ones (`DocResult.skipped`) included; the
    `skipped` argument adds skipped documents whose records are not in `docs` (counted as ok)."""
    pages = [p for d in docs for p in d.pages]
    statuses: Counter[str] = Counter(p.status for p in pages)
    kinds = Counter((d.error_kind or "error") for d in docs if d.error is not None)
    skipped_docs = [d for d in docs if d.skipped]
    return RunSummary(
        documents=len(docs) + skipped,
        documents_ok=sum(1 for d in docs if d.ok) + skipped,
        documents_failed=sum(1 for d in docs if not d.ok),
        documents_skipped=len(skipped_docs) + skipped,
        pages=len(pages),
        pages_by_status=tuple((s, statuses[s]) for s in PAGE_STATUSES if statuses[s]),
        failures_by_kind=tuple(sorted(kinds.items())),
        wall_seconds=wall_seconds,
        interrupted=interrupted or bool(signal),
        signal=signal or (2 if interrupted else 0),
        pages_processed=len(processed_pages(docs)),
        documents_skipped_not_ok=sum(1 for d in skipped_docs if not d.ok),
        not_reached=tuple(not_reached),
    )


def processed_pages(docs: Sequence[DocResult]) -> list[PageResult]:
    """The pages this run converted: not skipped documents', nor pages reused from checkpoints."""
    return [p for d in docs if not d.skipped for p in d.pages if p.page not in d.reused]


def exit_code_for(summary: RunSummary) -> ExitCode | int:
    """See the module docstring: 128 + signal · 0 · 4 · 3."""
    if summary.interrupted:
        return 128 + (summary.signal or 2)
    if summary.documents == 0:
        return ExitCode.OK  # nothing to do (an empty inbox) is not an error
    by_status = dict(summary.pages_by_status)
    produced = sum(by_status.get(s, 0) for s in TIMED_STATUSES)
    skipped_ok = summary.documents_skipped - summary.documents_skipped_not_ok
    if produced == 0 and summary.documents_ok == 0 and skipped_ok == 0:
        return ExitCode.NOTHING_SUCCEEDED
    bad_pages = sum(n for status, n in by_status.items() if status != "ok")
    if summary.documents_failed > 0 or bad_pages > 0:
        return ExitCode.PARTIAL
    return ExitCode.OK


def build_report(
    docs: Sequence[DocResult],
    summary: RunSummary,
    run: RunInfo,
    peak_rss_mb: float | None,
    peak_gpu_mb: float | None,
) -> dict[str, Any]:
    """The run report (written as `report.json`); plain JSON values, fixed key order."""
    pages = processed_pages(docs)
    timed = [p for p in pages if p.status in TIMED_STATUSES]
    wall = summary.wall_seconds
    generated = sum(p.tokens.generated for p in pages)
    decode_s = sum(p.timings.decode for p in timed) / 1000
    return {
        "schema": REPORT_SCHEMA,
        "run": _run_fields(run),
        "documents": {
            "total": summary.documents,
            "ok": summary.documents_ok,
            "failed": summary.documents_failed,
            "skipped": summary.documents_skipped,
            "skipped_not_ok": summary.documents_skipped_not_ok,
            "not_reached": len(summary.not_reached),
        },
        "pages": {
            "total": summary.pages,
            "processed": len(pages),
            "timed": len(timed),
            "by_status": {s: 0 for s in PAGE_STATUSES} | dict(summary.pages_by_status),
        },
        "failures_by_kind": dict(summary.failures_by_kind),
        "wall_seconds": round(wall, 3),
        "pages_per_s": _rate(len(pages), wall),
        "generated_tokens": generated,
        "generated_tokens_per_s": _rate(generated, wall),
        "decode_tokens_per_s": _rate(sum(p.tokens.generated for p in timed), decode_s),
        "percentile_method": "nearest-rank",
        "stages_ms": {stage: _stage_stats(timed, stage) for stage in STAGES},
        "tokens": _token_fields([p for d in docs for p in d.pages]),
        "memory": {"peak_rss_mb": _round(peak_rss_mb, 1), "peak_gpu_mb": _round(peak_gpu_mb, 1)},
        "interrupted": summary.interrupted,
        "not_reached": list(summary.not_reached),
        "exit_code": int(exit_code_for(summary)),
    }


def pages_csv(docs: Sequence[DocResult]) -> str:
    """One CSV row per page (plus one `document_error` row per document that failed to open)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for doc in docs:
        if doc.error is not None:
            kind = f"{doc.error_kind}: " if doc.error_kind else ""
            blanks = [""] * (len(CSV_COLUMNS) - 5)
            error = f"{kind}{doc.error}"
            writer.writerow([doc.source, "", "document_error", *blanks, error, _flag(doc.skipped)])
        for page in doc.pages:
            writer.writerow(_csv_row(doc, page))
    return buffer.getvalue()


def summary_table(report: Mapping[str, Any]) -> Table:
    """A two-column table of the run's headline numbers, for stderr."""
    table = Table(title="ocrprune run", show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    docs, pages, tokens = report["documents"], report["pages"], report["tokens"]
    table.add_row(
        "documents", f"{docs['ok']} ok, {docs['failed']} failed, {docs['skipped']} skipped"
    )
    if docs.get("skipped_not_ok"):
        table.add_row("skipped, not ok", f"{docs['skipped_not_ok']} (--retry-failed redoes them)")
    if docs.get("not_reached"):
        table.add_row("not reached", f"{docs['not_reached']} (listed in report.json; re-run to convert them)")
    by_status = ", ".join(f"{n} {s}" for s, n in pages["by_status"].items() if n) or "0"
    table.add_row("pages", by_status)
    if pages.get("processed") != pages.get("total"):
        table.add_row("pages converted now", str(pages.get("processed")))
    for kind, count in report["failures_by_kind"].items():
        table.add_row(f"failed: {kind}", str(count))
    table.add_row("wall time", f"{report['wall_seconds']:.1f} s")
    table.add_row("pages/s", _fmt(report["pages_per_s"], "{:.2f}"))
    table.add_row("generated tokens/s", _fmt(report["generated_tokens_per_s"], "{:.1f}"))
    table.add_row(
        "visual tokens kept",
        f"{tokens['visual_kept']}/{tokens['visual_total']}"
        f" ({_fmt(tokens['visual_kept_ratio'], '{:.1%}')})",
    )
    for stage, stats in report["stages_ms"].items():
        table.add_row(
            f"{stage} p50/p95", f"{_fmt(stats['p50'], '{:.1f}')}/{_fmt(stats['p95'], '{:.1f}')} ms"
        )
    memory = report["memory"]
    table.add_row("peak RSS", _fmt(memory["peak_rss_mb"], "{:.0f} MB"))
    table.add_row("peak GPU", _fmt(memory["peak_gpu_mb"], "{:.0f} MB"))
    run = report["run"]
    table.caption = f"{run['model']} · {run['device']} {run['dtype']} · keep {run['keep']}"
    if run["dummy_model"]:
        table.caption += " · tiny-random model: text is meaningless"
    return table


def render_summary(report: Mapping[str, Any], width: int = 100) -> str:
    """`summary_table` as plain text (no colour codes)."""
    buffer = io.StringIO()
    Console(file=buffer, width=width, color_system=None, force_terminal=False).print(
        summary_table(report)
    )
    return buffer.getvalue()


def _run_fields(run: RunInfo) -> dict[str, Any]:
    return run.describe() | {"ocrprune_version": run.version or ocrprune.__version__}


def _stage_stats(pages: Sequence[PageResult], stage: str) -> dict[str, float | None]:
    values = [getattr(p.timings, stage) for p in pages]
    return {
        "p50": _round(percentile(values, 50), 2),
        "p95": _round(percentile(values, 95), 2),
        "mean": _round(sum(values) / len(values), 2) if values else None,
    }


def _token_fields(pages: Sequence[PageResult]) -> dict[str, Any]:
    visual_total = sum(p.tokens.visual_total for p in pages)
    visual_kept = sum(p.tokens.visual_kept for p in pages)
    before = sum(p.tokens.prompt_unpruned for p in pages)
    after = sum(p.tokens.prompt for p in pages)
    return {
        "visual_total": visual_total,
        "visual_kept": visual_kept,
        "visual_kept_ratio": _round(visual_kept / visual_total, 4) if visual_total else None,
        "prompt_unpruned": before,
        "prompt": after,
        "prompt_ratio": _round(after / before, 4) if before else None,
    }


def _csv_row(doc: DocResult, page: PageResult) -> list[str | int]:
    t = page.tokens
    timings = [f"{getattr(page.timings, stage):.2f}" for stage in STAGES]
    return [
        doc.source,
        page.page,
        page.status,
        t.visual_total,
        t.visual_kept,
        t.prompt_unpruned,
        t.prompt,
        t.generated,
        *timings,
        f"{page.keep.ratio:.4g}",
        page.error or "",
        _flag(doc.skipped),
    ]


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _rate(count: float, seconds: float) -> float | None:
    return round(count / seconds, 3) if seconds > 0 else None


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _fmt(value: float | None, pattern: str) -> str:
    return "n/a" if value is None else pattern.format(value)
