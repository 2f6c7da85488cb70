"""Text that people type and others read (names, labels, recipe strings): printable only.

Refused: the code points of Unicode's categories Cc (controls), Cf (invisible format characters:
soft hyphen, bidi marks, overrides and isolates, zero-width spaces and joiners, the byte-order
mark, tag characters), Co (private use), Cs (surrogates), Zl and Zp (line and paragraph
separators), as of Unicode 14: they make a name display as something it is not. ``REFUSED``
lists them; ``PRINTABLE_PATTERN`` is the rule the API publishes in its schema and enforces with
the same expression (surrogates, which a JSON escape can produce but UTF-8 cannot carry, are
refused besides: ``check_unicode``).
"""

from __future__ import annotations

import re

SURROGATES = (0xD800, 0xDFFF)
REFUSED = (  # (first, last) code points
    (0x0000, 0x001F), (0x007F, 0x009F), (0x00AD, 0x00AD), (0x0600, 0x0605), (0x061C, 0x061C),
    (0x06DD, 0x06DD), (0x070F, 0x070F), (0x0890, 0x0891), (0x08E2, 0x08E2), (0x180E, 0x180E),
    (0x200B, 0x200F), (0x2028, 0x202E), (0x2060, 0x2064), (0x2066, 0x206F), (0xE000, 0xF8FF),
    (0xFEFF, 0xFEFF), (0xFFF9, 0xFFFB), (0x110BD, 0x110BD), (0x110CD, 0x110CD),
    (0x13430, 0x13438), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A), (0xE0001, 0xE0001),
    (0xE0020, 0xE007F), (0xF0000, 0xFFFFD), (0x100000, 0x10FFFD),
)  # fmt: skip


def _char(cp: int) -> str:
    """One code point in a character class: an escape in the BMP, else the character itself
    (read alike by Python's re, the API's validator and the published schema's readers)."""
    return f"\\u{cp:04x}" if cp <= 0xFFFF else chr(cp)


def _class(ranges: tuple[tuple[int, int], ...]) -> str:
    return "".join(_char(a) if a == b else f"{_char(a)}-{_char(b)}" for a, b in ranges)


PRINTABLE_PATTERN = f"^[^{_class(REFUSED)}]*$"
_REFUSED = re.compile(f"[{_class((*REFUSED, SURROGATES))}]")
_SURROGATE = re.compile(f"[{_class((SURROGATES,))}]")


def unprintable(text: str) -> str | None:
    """The first character of ``text`` that is not printable, written as U+XXXX, or None."""
    found = _REFUSED.search(text)
    return None if found is None else f"U+{ord(found.group()):04X}"


def check_unicode(text: str) -> str:
    """``text`` unless it holds a lone surrogate (ValueError)."""
    if _SURROGATE.search(text):
        raise ValueError("contains a lone surrogate; send valid UTF-8 text")
    return text
