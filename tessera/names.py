"""Text that people type and others read (names, labels, recipe strings): printable only.

Refused: control characters (C0, DEL, C1), the invisible format characters that make text display
as something it is not (soft hyphen, bidi marks, overrides and isolates, zero-width spaces and
joiners, the byte-order mark, interlinear annotation), line and paragraph separators, surrogates
and private-use characters. ``PRINTABLE_PATTERN`` is the rule the API publishes in its schema and
enforces with the same expression; lone surrogates (which a JSON escape can produce but UTF-8
cannot carry) are refused besides (``check_unicode``).
"""

from __future__ import annotations

import re

REFUSED = (
    "\\u0000-\\u001f\\u007f-\\u009f\\u00ad\\u061c\\u180e\\u200b-\\u200f\\u2028-\\u202e"
    "\\u2060-\\u206f\\ufeff\\ufff9-\\ufffb\\ue000-\\uf8ff"
)
SURROGATES = "\\ud800-\\udfff"
PRINTABLE_PATTERN = f"^[^{REFUSED}]*$"
_REFUSED = re.compile(f"[{REFUSED}{SURROGATES}]")
_SURROGATE = re.compile(f"[{SURROGATES}]")


def unprintable(text: str) -> str | None:
    """The first character of ``text`` that is not printable, written as U+XXXX, or None."""
    found = _REFUSED.search(text)
    return None if found is None else f"U+{ord(found.group()):04X}"


def check_unicode(text: str) -> str:
    """``text`` unless it holds a lone surrogate (ValueError)."""
    if _SURROGATE.search(text):
        raise ValueError("contains a lone surrogate; send valid UTF-8 text")
    return text


def check_printable(text: str) -> str:
    """``text`` when every character is printable; ValueError naming the first that is not."""
    bad = unprintable(text)
    if bad is not None:
        raise ValueError(f"contains the unprintable character {bad}; use printable text")
    return text
