"""Text that came from a student's code, made safe to show: it is data, never terminal
control.

    shown("ok\r\x1b[2KPASS")          # 'ok\\r\\x1b[2KPASS': one line, nothing moves the cursor
    shown(output, newlines=True)      # an output block keeps its line breaks
    clean("bad \ud800")               # 'bad \\ud800': lone surrogates escaped, so it can be written
"""

from __future__ import annotations

import unicodedata

__all__ = ["shown", "clean"]


def clean(text: str) -> str:
    """`text` with lone surrogates (which no encoder writes) as \\udXXX escapes."""
    if not any("\ud800" <= c <= "\udfff" for c in text):
        return text
    return "".join(f"\\u{ord(c):04x}" if "\ud800" <= c <= "\udfff" else c for c in text)


def shown(text: str, newlines: bool = False) -> str:
    """`text` for a terminal: control characters (carriage return, escape, tab, newline unless
    `newlines`), invisible format characters (bidirectional overrides, zero-width marks) and
    lone surrogates as escapes; a backslash stays a backslash."""
    out = []
    for char in str(text):
        if char == "\n" and newlines:
            out.append(char)
            continue
        category = unicodedata.category(char)
        if category in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            code = ord(char)
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char) or (
                f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000
                else f"\\U{code:08x}"))
        else:
            out.append(char)
    return "".join(out)
