"""callerMain's printing of bytes (``show_text``): one line, unchanged for
plain text, and exact (it can be read back) for any bytes."""

from __future__ import annotations

import re

from hypothesis import example, given
from hypothesis import strategies as st

from clerk.caller_main import show_text

_ESCAPE = re.compile(r"\\(\\|n|r|t|x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8})")


def read_back(text: str) -> bytes:
    """The bytes ``show_text`` printed as ``text`` (the documented scheme)."""
    out = bytearray()
    pos = 0
    for m in _ESCAPE.finditer(text):
        out += text[pos:m.start()].encode()
        assert "\\" not in text[pos:m.start()], text  # every backslash is an escape
        esc = m.group(1)
        if esc in ("\\", "n", "r", "t"):
            out += {"\\": b"\\", "n": b"\n", "r": b"\r", "t": b"\t"}[esc]
        elif esc[0] == "x":
            out.append(int(esc[1:], 16))  # a raw byte (>= 0x80) or an ASCII control
        else:
            out += chr(int(esc[1:], 16)).encode()
        pos = m.end()
    out += text[pos:].encode()
    assert "\\" not in text[pos:], text
    return bytes(out)


def test_plain_text_prints_unchanged() -> None:
    for text in ("hello, world", "", "clé välue ✓", "a b", "日本語"):
        assert show_text(text.encode()) == text
    assert show_text(b"a b", escape_space=True) == "a\\x20b"


def test_what_is_not_printable_text_is_escaped() -> None:
    assert show_text(b"\x00\xff") == "\\x00\\xff"
    assert show_text(b"a\\b") == "a\\\\b"
    assert show_text(b"line1\nline2\r\t") == "line1\\nline2\\r\\t"
    assert show_text("é".encode() + b"\xc3") == "é\\xc3"  # a truncated sequence
    assert show_text("\u0085\u200b".encode()) == "\\u0085\\u200b"  # unprintable, valid
    assert show_text("\U000e0001".encode()) == "\\U000e0001"
    # An escaped byte and the text of an escape never print the same.
    assert show_text(b"\xff") != show_text(b"\\xff")


@given(st.binary(max_size=40) | st.text(max_size=20).map(str.encode), st.booleans())
@example(b"\xed\xb2\x80", False)  # an encoded surrogate: not UTF-8
@example(b"\\x20 ", True)
def test_any_bytes_print_on_one_line_and_read_back_exactly(data: bytes, space: bool) -> None:
    shown = show_text(data, escape_space=space)
    assert shown.isprintable() and "\n" not in shown
    assert not (space and " " in shown)
    assert read_back(shown) == data
