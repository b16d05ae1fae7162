"""numpy helpers for blocks of CSV/TSV text: line and field bounds, trimming, gathering.

:mod:`psi.records` reads files in blocks of a few MiB that end at a newline. For a block with no
quote characters these helpers do in a few numpy passes what splitting every line in Python did:

* :func:`line_bounds` — start and end of every line (line ending excluded, a ``\\r`` before
  ``\\n`` too) and the end of each line's raw bytes (line ending included);
* :func:`field_bounds` — start and end of field ``c`` of chosen lines that hold exactly
  ``width - 1`` delimiters;
* :func:`trim_bounds` — the bounds after ``bytes.strip(chars)``;
* :func:`gather` — the byte strings ``block[starts[i]:ends[i]]`` as a list.

Promises (checked against the plain-Python results in ``tests/test_textblocks.py``): every
function returns exactly what the obvious per-line Python code returns for the same block.
"""

from __future__ import annotations

import numpy as np

__all__ = ["line_bounds", "field_bounds", "trim_bounds", "gather"]

_PAD_MAX = 64  # longest field gathered through a padded matrix; longer ones are sliced one by one


def line_bounds(arr: np.ndarray, crlf: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(starts, ends, raw_ends) of the lines of ``arr``, as ``bytes.split(b"\\n")`` gives them
    (the empty piece after a final newline is not a line). ``ends`` exclude the ``\\n`` and,
    when ``crlf``, a ``\\r`` just before it; ``raw_ends`` include the line ending."""
    newlines = np.flatnonzero(arr == 10)
    size = len(arr)
    terminated = bool(size) and arr[-1] == 10
    count = len(newlines) + (0 if terminated else 1)
    starts = np.empty(count, dtype=np.int64)
    starts[0] = 0
    starts[1:] = newlines[: count - 1] + 1
    ends = np.empty(count, dtype=np.int64)
    ends[: len(newlines)] = newlines
    if not terminated:
        ends[-1] = size
    raw_ends = ends + 1
    if not terminated:
        raw_ends[-1] = size
    if crlf:
        before = np.maximum(ends - 1, 0)
        ends -= (ends > starts) & (arr[before] == 13)
    return starts, ends, raw_ends


def field_bounds(delims: np.ndarray, starts: np.ndarray, ends: np.ndarray, width: int,
                 column: int) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of field ``column`` of the lines ``starts``/``ends``, each holding exactly
    ``width - 1`` of the (sorted) delimiter positions ``delims``."""
    if width == 1:
        return starts, ends
    first = np.searchsorted(delims, starts)  # index of each line's first delimiter
    begin = starts if column == 0 else delims[first + (column - 1)] + 1
    end = ends if column == width - 1 else delims[first + column]
    return begin, end


def trim_bounds(arr: np.ndarray, begin: np.ndarray, end: np.ndarray,
                strip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of ``block[b:e].strip(chars)`` for each pair, ``strip`` being a 256-entry bool table
    of ``chars``; one vectorised round per stripped byte (none when nothing is to strip)."""
    last = len(arr) - 1
    while True:
        edge = (begin < end) & strip[arr[np.minimum(begin, last)]]
        if not edge.any():
            break
        begin = begin + edge
    while True:
        edge = (begin < end) & strip[arr[np.maximum(end - 1, 0)]]
        if not edge.any():
            break
        end = end - edge
    return begin, end


def gather(block: bytes, arr: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> list[bytes]:
    """``[block[s:e] for s, e in zip(starts, ends)]`` (fields hold no NUL byte)."""
    count = len(starts)
    if not count:
        return []
    lengths = ends - starts
    longest = int(lengths.max())
    if longest == 0:
        return [b""] * count
    if longest > _PAD_MAX:
        return list(map(block.__getitem__, map(slice, starts.tolist(), ends.tolist())))
    # a padded matrix viewed as fixed-width strings: numpy drops the trailing NUL padding
    offsets = np.arange(longest, dtype=np.int64)
    index = starts[:, None] + offsets
    np.minimum(index, len(arr) - 1, out=index)
    matrix = arr[index]
    if int(lengths.min()) != longest:
        matrix[offsets >= lengths[:, None]] = 0
    return matrix.view(f"S{longest}").ravel().tolist()
