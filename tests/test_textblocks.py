"""psi.textblocks equals the per-line Python code it replaces (bytes.split / strip / slicing)."""

from __future__ import annotations

import re

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from psi.textblocks import field_bounds, gather, line_bounds, trim_bounds

_SPACE = b" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"
_TABLE = np.zeros(256, dtype=bool)
_TABLE[list(_SPACE)] = True

_bytes = st.lists(st.sampled_from([b"a", b"7", b",", b" ", b"\t", b"\r\n", b"\n", b"\x1f", "张".encode(), b"x" * 70]),
                  max_size=30).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(block=_bytes)
def test_line_bounds_match_split(block: bytes) -> None:
    if b"\r" in block.replace(b"\r\n", b""):
        return  # callers only pass blocks whose CRs all end lines
    arr = np.frombuffer(block, dtype=np.uint8)
    crlf = b"\r" in block
    starts, ends, raw_ends = line_bounds(arr, crlf)
    lines = (block.replace(b"\r\n", b"\n") if crlf else block).split(b"\n")
    raw = block.split(b"\n")
    if block.endswith(b"\n"):
        lines.pop()
        raw.pop()
    assert [block[s:e] for s, e in zip(starts.tolist(), ends.tolist())] == lines
    assert [block[s:e].rstrip(b"\n") for s, e in zip(starts.tolist(), raw_ends.tolist())] == raw
    if block:  # raw_ends keep each line's own newline
        assert [block[s:e] for s, e in zip(starts.tolist(), raw_ends.tolist())] == re.findall(rb"[^\n]*\n|[^\n]+$", block)
    assert raw_ends[-1] == len(block) if len(block) else True


@settings(max_examples=300, deadline=None)
@given(rows=st.lists(st.lists(st.sampled_from(["", "a", " b ", "张三", "x" * 80, "\t1", "c \t ", "  "]), min_size=3, max_size=3),
                     min_size=1, max_size=20), column=st.integers(0, 2), trim=st.booleans())
def test_fields_trim_and_gather_match_python(rows: list[list[str]], column: int, trim: bool) -> None:
    block = "".join(",".join(r).replace("\t", "\x0b") + "\n" for r in rows).encode()
    arr = np.frombuffer(block, dtype=np.uint8)
    starts, ends, _raw = line_bounds(arr, False)
    delims = np.flatnonzero(arr == ord(","))
    begin, end = field_bounds(delims, starts, ends, 3, column)
    expected = [line.split(b",")[column] for line in block.split(b"\n")[:-1]]
    if trim:
        begin, end = trim_bounds(arr, begin, end, _TABLE)
        expected = [e.strip(_SPACE) for e in expected]
    assert gather(block, arr, begin, end) == expected
    assert gather(block, arr, begin, end) == [block[b:e] for b, e in zip(begin.tolist(), end.tolist())]
