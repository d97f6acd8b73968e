"""Rasterization: our render path vs the PNG round-trip of the official scripts, same pages, one run.

Ours (`ocrprune.raster.rasterize_pdf_page`): MuPDF renders the page, and Pillow wraps the raw RGB
samples. The official DeepSeek-OCR PDF script encodes each rendered pixmap to PNG and decodes it
again (`Image.open(io.BytesIO(pixmap.tobytes("png")))`); we add `.convert("RGB")`, which forces
the decode that the model would need anyway. Both produce identical pixels (checked on every page).
Pages alternate between the two paths within each repeat; the table also shows MuPDF's render alone.

The process boundary: `PageStream` renders in a worker process (so a page over the render time
limit can be stopped). Two more rows time a whole `render()` of the same page (load, render, RGB
image) in this thread and through the render process (request, render, pixels back through the
shared mapping, PIL image), alternating; their difference is the per-page cost of the boundary.

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


IN_THREAD = "render(): in this thread"
IN_PROCESS = "render(): through the render process"


def boundary(pdfs: list[Path], repeats: int, guard: Guard) -> tuple[dict[str, list[float]], bool]:
    """Per-page ms of a whole render() in this thread and through the render process."""
    import threading
    from pathlib import PurePosixPath

    from ocrprune.config import RasterConfig
    from ocrprune.inputs import Document
    from ocrprune.raster import open_document
    from ocrprune.raster.worker import RenderWorker, page_from_reply

    cfg = RasterConfig(dpi=DPI)
    worker = RenderWorker(threading.Event())
    times: dict[str, list[float]] = {IN_THREAD: [], IN_PROCESS: []}
    identical = True
    try:
        for path in pdfs:
            doc = Document(path.absolute(), path.name, PurePosixPath(path.stem), "pdf")
            worker.call(("open", doc, cfg), None)
            with open_document(doc, cfg) as opened:
                for number in opened.page_numbers:

                    def here(n: int = number) -> object:
                        return opened.render(n).image

                    def there(n: int = number, name: str = path.name) -> object:
                        return page_from_reply(worker.call(("render", n), None), worker, name).image

                    identical &= here().tobytes() == there().tobytes()  # also the warm-up
                    for rep in range(repeats):
                        order = [(IN_THREAD, here), (IN_PROCESS, there)]
                        order = order if rep % 2 == 0 else order[::-1]

                        def sample(pairs: list = order) -> dict[str, float]:
                            took = {}
                            for name, func in pairs:
                                begin = time.perf_counter()
                                func()
                                took[name] = (time.perf_counter() - begin) * 1000.0
                            return took

                        for name, ms in guard.measure(sample).items():
                            times[name].append(ms)
    finally:
        worker.shutdown()
    return times, identical


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
        boundary_ms, same_pixels = boundary(pdfs, repeats, guard)
        identical &= same_pixels
        paths_ms.update(boundary_ms)
    per_page = {name: sum(v) / repeats / pages for name, v in paths_ms.items()}
    overhead = per_page[IN_PROCESS] - per_page[IN_THREAD]
    overhead_median = median(paths_ms[IN_PROCESS]) - median(paths_ms[IN_THREAD])
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
    print(
        f"render process boundary: {overhead:+.2f} ms/page mean, {overhead_median:+.2f} ms/page "
        f"median ({IN_PROCESS} vs {IN_THREAD})"
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
        "timed": (
            "one page at a time: render + conversion to an RGB PIL image on the calling thread; "
            "the render() rows include loading the page, the process row the round trip"
        ),
        "process_boundary_ms_per_page": {"mean": overhead, "median": overhead_median},
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
