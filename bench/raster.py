"""Rasterization: our render path vs the PNG round-trip of the official scripts, same pages, one run.

Ours (`ocrprune.raster.rasterize_pdf_page`): MuPDF renders the page, and Pillow wraps the raw RGB
samples. The official DeepSeek-OCR PDF script encodes each rendered pixmap to PNG and decodes it
again (`Image.open(io.BytesIO(pixmap.tobytes("png")))`); we add `.convert("RGB")`, which forces
the decode that the model would need anyway. Both produce identical pixels (checked on every page).
Pages alternate between the two paths within each repeat; the table also shows MuPDF's render alone.

    python bench/raster.py          # about 15 seconds
    python bench/raster.py --quick  # seconds (CI)
"""

from __future__ import annotations

import io
import sys
import tempfile
import time
from pathlib import Path

from charts import bar_chart
from common import (
    SAMPLE_DOCS,
    Guard,
    header,
    machine,
    median,
    parser,
    ratio,
    table,
    write_pdf,
    write_results,
)

DPI = 144


def naive(page: object, dpi: int) -> object:
    """The official scripts' path: pixmap -> PNG bytes -> PIL decode."""
    import pymupdf
    from PIL import Image

    zoom = dpi / 72.0
    pixmap = page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), alpha=False)
    return Image.open(io.BytesIO(pixmap.tobytes("png"))).convert("RGB")


def ours(page: object, dpi: int) -> object:
    from ocrprune.raster import rasterize_pdf_page

    return rasterize_pdf_page(page, dpi, 40_000_000)[0]


def render_only(page: object, dpi: int) -> object:
    import pymupdf

    zoom = dpi / 72.0
    return page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), alpha=False)


def main(argv: list[str] | None = None) -> int:
    import pymupdf

    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=None, help="passes over all pages (default 5)")
    args = p.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 5)
    started = time.time()
    guard = Guard(enabled=not args.no_wait and not args.quick)
    guard.wait_quiet()
    host = machine()
    paths = {"generated text": 2 if args.quick else 20}
    with tempfile.TemporaryDirectory(prefix="ocrprune-raster-") as tmp:
        pdfs = [write_pdf(Path(tmp) / "generated.pdf", paths["generated text"], seed=3)]
        if not args.quick:
            pdfs += sorted(SAMPLE_DOCS.glob("*.pdf"))
        paths_ms: dict[str, list[float]] = {
            "ours": [],
            "naive PNG round-trip": [],
            "MuPDF render alone": [],
        }
        funcs = {"ours": ours, "naive PNG round-trip": naive, "MuPDF render alone": render_only}
        pages = 0
        identical = True
        for path in pdfs:
            with pymupdf.open(str(path)) as doc:
                for page in doc:
                    pages += 1
                    identical &= (
                        ours(page, DPI).tobytes() == naive(page, DPI).tobytes()
                    )  # also the warm-up
                    for rep in range(repeats):
                        order = list(funcs) if rep % 2 == 0 else list(reversed(funcs))

                        def sample(pg: object = page, names: list[str] = order) -> dict[str, float]:
                            times = {}
                            for name in names:
                                begin = time.perf_counter()
                                funcs[name](pg, DPI)
                                times[name] = (time.perf_counter() - begin) * 1000.0
                            return times

                        for name, ms in guard.measure(sample).items():
                            paths_ms[name].append(ms)
    per_page = {name: sum(v) / repeats / pages for name, v in paths_ms.items()}
    base = per_page["naive PNG round-trip"]
    rows = [
        {
            "path": name,
            "pages": pages,
            "dpi": DPI,
            "ms_per_page": ms,
            "median_ms": median(paths_ms[name]),
            "pages_per_s": 1000.0 / ms,
            "speedup_vs_naive": ratio(base, ms),
            "device": "cpu",
            "machine": host["summary"],
        }
        for name, ms in per_page.items()
    ]
    print(
        f"\nRasterization at {DPI} dpi, {pages} PDF pages x {repeats} ({host['summary']}); pixels identical: {identical}"
    )
    print(
        table(
            ["path", "ms/page (mean)", "median", "pages/s", "x vs naive"],
            [
                [
                    r["path"],
                    r["ms_per_page"],
                    r["median_ms"],
                    r["pages_per_s"],
                    f"{r['speedup_vs_naive']:.2f}x",
                ]
                for r in rows
            ],
        )
    )
    speedup = rows[0]["speedup_vs_naive"]
    if not args.quick:
        print(
            f"target: ours >= 5x the naive path: {speedup:.2f}x ({'met' if speedup >= 5 else 'NOT met'})"
        )
    payload = header(args, "raster", started) | {
        "machine": host,
        "dpi": DPI,
        "pages": pages,
        "pixels_identical": identical,
        "documents": [p.name for p in pdfs],
        "timed": "one page at a time on the calling thread: render + conversion to an RGB PIL image",
        "contention": guard.record(),
        "wall_s": round(time.time() - started, 1),
        "rows": rows,
    }
    png = bar_chart(
        f"Rasterization, ms per page at {DPI} dpi (lower is better)",
        "ms per page",
        [f"{r['path']} ({r['pages_per_s']:.0f} p/s)" for r in rows],
        {"ms per page": [r["ms_per_page"] for r in rows]},
    )
    write_results(args.out, "raster", payload, png)
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
