"""Text from data made safe to show a person: the one escaping every part of Shaping uses.

Mouse ids, stage names, reasons, rig ids and evidence come from data that a rig, an operator
or an attacker wrote. Before any of it reaches a terminal, a log read on one, or a message,
:func:`printable` shows each control character (C0, DEL, C1: so ESC, CSI and every escape
sequence), format character (bidirectional overrides, zero-width characters), lone surrogate
and line or paragraph separator as its Python escape (``\\x1b``, ``\\u202e``); everything
else, accents and symbols included, is kept. :func:`quoted` also cuts long values for
quoting in an error message. Only the standard library is used, so the rig's light install
has it.
"""

from __future__ import annotations

import unicodedata

_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
"""Unicode categories never printed as they are: controls, format characters (bidi overrides,
zero-width characters), lone surrogates, line and paragraph separators."""


def _escape_char(char: str) -> str:
    code = ord(char)
    if char == "\t":
        return "\\t"
    if char == "\n":
        return "\\n"
    if char == "\r":
        return "\\r"
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(value: object) -> str:
    """``value`` as text that is safe to print (see the module); None is the empty string."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():  # the common case: nothing to escape (space is printable)
        return text
    return "".join(
        _escape_char(char) if unicodedata.category(char) in _INVISIBLE_CATEGORIES else char
        for char in text
    )


def printable_split(value: object) -> list[str]:
    """The lines of ``value`` (split at ``\\n`` only), not yet escaped."""
    return ("" if value is None else str(value)).split("\n")


def printable_lines(value: object) -> str:
    """Like :func:`printable`, but line breaks (``\\n``) are kept as line breaks: for text of
    several lines built from data (evidence), each line escaped."""
    return "\n".join(printable(line) for line in printable_split(value))


def quoted(value: str, limit: int = 80) -> str:
    """:func:`printable`, cut to ``limit`` characters with the full length said: for quoting
    a value in an error message."""
    shown = printable(value)
    if len(shown) > limit:
        return f"{shown[:limit]}… ({len(value)} characters)"
    return shown
