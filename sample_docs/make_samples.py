"""Regenerate the sample documents in this folder (we made them ourselves; CC0).

    python sample_docs/make_samples.py

Uses only PyMuPDF and Pillow, which ocrprune already depends on.
"""

from __future__ import annotations

import random
from pathlib import Path

import pymupdf
from PIL import Image, ImageFilter

HERE = Path(__file__).resolve().parent
A4 = (595, 842)

TEXT = (
    "Batch OCR in practice\n\n"
    "Scanned archives rarely arrive clean. A folder of invoices, letters and reports mixes\n"
    "born-digital PDFs with photographed pages, rotated scans and the odd corrupt file.\n"
    "A batch tool must convert what it can, name what it cannot, and never lose a page.\n\n"
    "Visual-token pruning keeps the informative image tokens and merges the rest, so the\n"
    "language model reads a shorter prompt. On dense pages the savings are smaller; on\n"
    "sparse pages most tokens carry background and can go.\n"
)

ROWS = [
    ("Mode", "Base size", "Tiles", "Visual tokens"),
    ("Tiny", "512", "none", "64"),
    ("Small", "640", "none", "100"),
    ("Base", "1024", "none", "256"),
    ("Large", "1280", "none", "400"),
    ("Gundam", "1024 + 640", "2 to 9", "256 + 100 n"),
]

FORMULAS = [
    "Keep ratio:      r = 1 - (1 - r_txt) (1 - r_sim)",
    "Kept tokens:     K = floor(N * r)",
    "Merge:           v_i' = v_i + 0.1 * sum_j P_ij v_j",
    "Similarity:      r_sim = 1 - mean_i (1/(N-1)) sum_(j != i) cos^2(v_i, v_j)",
    "Sinkhorn step:   f = log a - LSE(C + g),   g = log b - LSE(C + f)",
]


def text_page(doc: pymupdf.Document, title: str, body: str) -> None:
    page = doc.new_page(width=A4[0], height=A4[1])
    page.insert_text((60, 80), title, fontsize=20, fontname="helv")
    page.insert_text((60, 120), body, fontsize=11, fontname="tiro", lineheight=1.5)


def make_text_pdf() -> None:
    doc = pymupdf.open()
    text_page(doc, "A plain text page", TEXT)
    doc.save(HERE / "text_page.pdf", garbage=4, deflate=True)


def make_table_pdf() -> None:
    doc = pymupdf.open()
    page = doc.new_page(width=A4[0], height=A4[1])
    page.insert_text((60, 80), "DeepSeek-OCR resolution modes", fontsize=18, fontname="helv")
    x0, y0, widths, height = 60, 110, [90, 120, 90, 150], 28
    for r, row in enumerate(ROWS):
        x = x0
        for c, cell in enumerate(row):
            rect = pymupdf.Rect(x, y0 + r * height, x + widths[c], y0 + (r + 1) * height)
            page.draw_rect(rect, color=(0, 0, 0), width=0.8)
            font = "hebo" if r == 0 else "helv"
            page.insert_text((rect.x0 + 6, rect.y1 - 9), cell, fontsize=11, fontname=font)
            x += widths[c]
    doc.save(HERE / "table.pdf", garbage=4, deflate=True)


def make_formula_pdf() -> None:
    doc = pymupdf.open()
    page = doc.new_page(width=A4[0], height=A4[1])
    page.insert_text((60, 80), "RTPrune in five formulas", fontsize=18, fontname="helv")
    for i, line in enumerate(FORMULAS):
        page.insert_text((60, 130 + 40 * i), f"({i + 1})  {line}", fontsize=12, fontname="cour")
    doc.save(HERE / "formulas.pdf", garbage=4, deflate=True)


def make_two_page_pdf() -> None:
    doc = pymupdf.open()
    text_page(doc, "Report, page one", TEXT)
    text_page(doc, "Report, page two", TEXT.replace("Batch OCR in practice", "Findings"))
    doc.save(HERE / "two_pages.pdf", garbage=4, deflate=True)


def make_photo() -> None:
    """A 'photo' of the text page: slightly rotated, warm paper, blur and sensor noise."""
    doc = pymupdf.open(HERE / "text_page.pdf")
    pix = doc[0].get_pixmap(dpi=110)
    page = Image.frombytes("RGB", (pix.width, pix.height), pix.samples)
    paper = Image.new("RGB", (page.width + 160, page.height + 160), (92, 84, 74))
    tinted = Image.eval(page, lambda v: int(v * 0.93 + 8))
    paper.paste(tinted.rotate(-2.5, expand=False, fillcolor=(92, 84, 74)), (80, 80))
    photo = paper.filter(ImageFilter.GaussianBlur(0.8))
    rng = random.Random(7)
    noise = Image.effect_noise(photo.size, 12).convert("RGB")
    photo = Image.blend(photo, noise, 0.06)
    photo = photo.rotate(rng.uniform(-1, 1), fillcolor=(92, 84, 74))
    photo.save(HERE / "photo_of_page.jpg", quality=85)


if __name__ == "__main__":
    make_text_pdf()
    make_table_pdf()
    make_formula_pdf()
    make_two_page_pdf()
    make_photo()
