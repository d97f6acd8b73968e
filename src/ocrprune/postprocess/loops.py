"""Tell a page that ran into a loop from a page that was merely long. Pure, stdlib only.

A page that stops without end-of-sequence is `length` (capped: its text is kept and may be fine,
just cut short) unless its output *ends* in a loop, when it is `repetition`. The test, documented
in the README, looks only at the tail of the output:

* **token loop**: the last `max(3p, 32)` generated tokens repeat with some period `p` in 1..256
  (`t[i] == t[i - p]` throughout): at least three copies of the same unit, e.g. `<td></td>` cells
  or a block of lines emitted again and again;
* **line loop**: among the last 16 non-blank lines of the text, one line (whitespace-trimmed)
  occurs 8 times or more: the near-loops where a counter or a word changes but the line recurs.

The windowed no-repeat n-gram rule of the official decoder stops exact short loops, so what reaches
the cap in practice is long-period or near-identical repetition; both tests are cheap (a few
thousand comparisons per page) and run once per capped page.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

MAX_PERIOD = 256
MIN_LOOP_TOKENS = 32
TAIL_LINES = 16
LINE_REPEATS = 8


def token_loop_period(token_ids: Sequence[int]) -> int | None:
    """The smallest period `p` whose three copies (at least 32 tokens) end the sequence, or None."""
    n = len(token_ids)
    for p in range(1, MAX_PERIOD + 1):
        span = max(3 * p, MIN_LOOP_TOKENS)
        if span > n:
            break
        tail = token_ids[n - span :]
        if all(tail[i] == tail[i - p] for i in range(p, span)):
            return p
    return None


def line_loop(text: str) -> str | None:
    """A line repeated `LINE_REPEATS`+ times among the last `TAIL_LINES` non-blank lines, or None."""
    lines = [line.strip() for line in text.splitlines() if line.strip()][-TAIL_LINES:]
    if not lines:
        return None
    line, count = Counter(lines).most_common(1)[0]
    return line if count >= LINE_REPEATS else None


def ends_in_loop(token_ids: Sequence[int], text: str) -> bool:
    """True if the output ends in a token loop or a line loop (see the module docstring)."""
    return token_loop_period(token_ids) is not None or line_loop(text) is not None
