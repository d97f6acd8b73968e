"""Show file names safely: one line, valid UTF-8, and nothing lost.

POSIX file names are bytes. Python holds names that are not valid UTF-8 as text with surrogate
escapes, which cannot be written to a UTF-8 stream or JSON; names may also hold newlines or control
characters that would split or garble a log line. `escape_name` is the one place that turns a name
into display text: undecodable bytes become `\\xNN` (NN >= 80), control characters `\\n`, `\\t`,
`\\r`, `\\xNN` (NN < 20) or `\\u00NN`, and a backslash is doubled, so the original bytes can always be recovered
(`unescape_name`) and every log event stays on one line.
"""

from __future__ import annotations

import os
import re

_SIMPLE = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\"}
_NEEDS_ESCAPE = re.compile(r"[\x00-\x1f\x7f-\x9f\\\ud800-\udfff\u2028\u2029]")


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    if char in _SIMPLE:
        return _SIMPLE[char]
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a surrogate escape: the original undecodable byte
        return f"\\x{code - 0xDC00:02x}"
    if code <= 0x7F:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}"


def escape_name(name: str | os.PathLike[str]) -> str:
    """`name` as one line of valid UTF-8 text, reversible with `unescape_name`."""
    return _NEEDS_ESCAPE.sub(_escape_char, os.fspath(name))


_UNESCAPE = re.compile(r"\\(\\|n|t|r|x[0-9a-f]{2}|u[0-9a-f]{4})")


def unescape_name(text: str) -> str:
    """The inverse of `escape_name` (bytes 0x80-0xff come back as surrogate escapes)."""

    def undo(match: re.Match[str]) -> str:
        code = match.group(1)
        if code in ("\\", "n", "t", "r"):
            return {"\\": "\\", "n": "\n", "t": "\t", "r": "\r"}[code]
        value = int(code[1:], 16)
        if code[0] == "x" and value >= 0x80:
            return chr(0xDC00 + value)
        return chr(value)

    return _UNESCAPE.sub(undo, text)
