"""Escaping for every output: terminal, Markdown, LaTeX, XML and strict JSON.

Case names, descriptions, file names and messages come from case files, which are
untrusted input. Whatever reaches an output goes through the function for that output
here, so that no text from a case file can steer a terminal (escape sequences that set
the window title or erase a line), restructure a Markdown report (hidden rows, images,
headings), run LaTeX commands, make XML ill-formed or JSON non-strict.
"""

from __future__ import annotations

import math
import re
from typing import Any

_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
"""C0 and C1 control characters (tab and newline excepted), DEL, and the bidirectional
overrides that reorder what a terminal shows."""

_LINE_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group(0))
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def terminal(text: str) -> str:
    """`text` with control characters shown as ``\\x1b``-style escapes (newlines and tabs
    kept): safe to print to a terminal."""
    return _CONTROL.sub(_visible, text)


def one_line(text: str) -> str:
    """`text` for a single line of output (a table cell, a name): every control
    character, newlines included, shown as an escape."""
    return _LINE_CONTROL.sub(_visible, text)


def is_plain_name(text: str) -> bool:
    """Whether `text` is fit as a case name: printable characters only (no control
    characters, no newlines, no bidirectional overrides)."""
    return text.isprintable() and not _LINE_CONTROL.search(text)


_MARKDOWN_SPECIAL = re.compile(r"([\\`\[\]#!|])")
"""What lets text become structure: links and images (``[``, ``]``, ``!``), code spans,
headings, table cells and escapes. (Emphasis marks are left alone: at worst they change
a word's style, and quantity names such as ``u_xx`` stay readable in the raw file.)"""


def markdown(text: str) -> str:
    """`text` as literal Markdown inline text (a table cell, a heading, a list item):
    Markdown punctuation backslash-escaped, ``<``, ``>`` and ``&`` as entities (no raw
    HTML, no comments), newlines as spaces, control characters escaped."""
    text = one_line(str(text).replace("\r\n", " ").replace("\n", " "))
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


_LATEX = {
    "\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "$": r"\$", "&": r"\&", "#": r"\#",
    "^": r"\^{}", "_": r"\_", "%": r"\%", "~": r"\~{}",
}  # fmt: skip


def latex(text: str) -> str:
    """`text` as literal LaTeX text: ``\\ { } $ & # ^ _ % ~`` escaped (no command, no
    ``\\input``, no ``\\write18``), control characters shown as escapes."""
    return "".join(_LATEX.get(ch, ch) for ch in one_line(str(text)))


_XML_ILLEGAL = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml(text: str) -> str:
    """`text` with the characters XML 1.0 cannot hold (most control characters, lone
    surrogates, U+FFFE/FFFF) shown as escapes; ElementTree escapes ``<``, ``&``, quotes."""
    return _XML_ILLEGAL.sub(_visible, str(text))


def json_safe(value: Any) -> Any:
    """`value` with every NaN or infinite float replaced by ``"nan"``, ``"inf"`` or
    ``"-inf"`` (recursively), so that ``json.dumps(..., allow_nan=False)`` succeeds: the
    output is strict JSON any parser reads."""
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and hasattr(value, "dtype"):  # a numpy scalar
        return json_safe(value.item())
    if hasattr(value, "tolist"):
        return json_safe(value.tolist())
    return value


__all__ = ["is_plain_name", "json_safe", "latex", "markdown", "one_line", "terminal", "xml"]
