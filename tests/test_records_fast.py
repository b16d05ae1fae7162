"""The numpy read/write path against the csv-module reference, on inputs a bank's exports have:
GBK via an encoding, BOM, CRLF, quoted fields with embedded newlines, full-width and
zero-width characters, padded and empty keys, composite keys, duplicates, long keys; many
blocks. Keys, row numbers, counts, error messages and every output byte must be identical."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from psi import records
from psi.convert import write_output
from psi.encodings import utf8_copy
from psi.errors import InputError, UsageError
from psi.normalize import Normalization
from psi.records import read_keys

_VALUES = ["110101199003077777", " 13800138000 ", "１３８００１３８０００", "张三", "a,b", 'say "hi"', "line\nbreak",
           "", "  ", "\u200bzw\ufeff", "X" * 90, "Ｘ１\u3000", "tab\tin", "é", "0086 138-0013-8000",
           " 7 \t ", "\x0b8  "]


_CLEAN = [v for v in _VALUES if not any(c in v for c in ',"\n')]


def _table(rng: random.Random, rows: int, crlf: bool, bom: bool, ascii_keys: bool) -> str:
    # ASCII-only key stretches take the bytes fast path, the others the str path
    clean = [v for v in _CLEAN if v.isascii()] if ascii_keys else _CLEAN
    pool = [str(rng.randint(0, rows // 3)) + rng.choice(clean) if rng.random() < 0.7 else rng.choice(clean)
            for _ in range(rows)]
    out = ["id,name,other"]
    for i in range(rows):
        # quoted values only in one stretch: most blocks take the numpy path, some the csv module
        odd = 100 <= i < 140 and rng.random() < 0.3
        fields = [pool[i] if not odd else '"' + pool[i], rng.choice(_VALUES if odd else clean), f"{i}"]
        out.append(",".join('"' + f.replace('"', '""') + '"' if any(c in f for c in ',"\n\r') else f for f in fields))
        if rng.random() < 0.02:
            out.append("")  # a blank line between records
    newline = "\r\n" if crlf else "\n"
    return ("\ufeff" if bom else "") + newline.join(out) + newline


def _run(path: Path, encoding: str | None, on: list[str], norm: Normalization, dedup: str, skip: bool,
         out: Path, order_seed: int) -> object:
    try:
        with utf8_copy(path, encoding) as text:
            table = read_keys(text, on, normalization=norm, dedup=dedup, skip_empty=skip)
            rows = table.rows_read
            order = np.random.default_rng(order_seed).permutation(rows)[: rows // 2]
            order = np.concatenate([order, [-1]])
            write_output(text, "csv", order, out, encoding=encoding, expect_rows=rows, offsets=table.offsets)
    except (InputError, UsageError) as err:
        return type(err).__name__, str(err)
    return (table.keys, table.row_numbers.tolist(), table.row_keys.tolist(), table.rows_read, table.duplicate_rows,
            table.skipped_rows, out.read_bytes())


@pytest.mark.parametrize("seed", range(16))
def test_numpy_path_matches_the_csv_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    rng = random.Random(seed)
    encoding = rng.choice([None, "gbk", "gb18030", "utf-8-sig"])
    text = _table(rng, rng.randint(300, 1500), crlf=rng.random() < 0.5, bom=encoding == "utf-8-sig",
                  ascii_keys=seed % 2 == 0)
    data = text.encode("gb18030" if encoding in ("gbk", "gb18030") else "utf-8")
    if encoding == "gbk":
        data = text.replace("é", "e").replace("\u200b", "").replace("\ufeff", "").encode("gbk")
    path = tmp_path / "in.csv"
    path.write_bytes(data)
    on = rng.choice([["id"], ["id", "name"], ["name", "id"]])
    norm = [Normalization(), Normalization(trim=False), Normalization(fullwidth=True, casefold=True),
            Normalization(phone=True, fullwidth=True)][seed % 4]
    dedup = ["first", "keep-all", "error"][seed % 3]  # "error" runs end at the first repeat
    skip = seed % 5 != 0  # without skipping, the first empty key ends the run
    monkeypatch.setattr(records, "_SCAN_BLOCK", rng.choice([512, 4096, 16384]))
    fast = _run(path, encoding, on, norm, dedup, skip, tmp_path / "fast.csv", seed)
    monkeypatch.setattr(records, "_FAST", False)
    slow = _run(path, encoding, on, norm, dedup, skip, tmp_path / "slow.csv", seed)
    assert fast == slow
