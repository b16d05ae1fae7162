"""Deterministic synthetic customer tables for demos, tests and benchmarks.

:func:`generate` writes, into one directory:

* ``bank_a.csv`` and ``bank_b.csv`` — customer tables with three key columns,
  ``id_number`` (18-digit PRC resident identity number with a valid ISO 7064 MOD 11-2 check
  character, a real county-level region code and a birth date 1950..2005), ``phone``
  (11-digit mainland mobile number with a real operator prefix) and ``email``, plus non-key
  columns that differ between the banks. A given fraction of customers is in both tables; those
  rows share id_number, phone, email, name and birth date (so all three keys give the same
  intersection). Rows are in random order.
* ``blacklist.csv`` — ``id_number, reason, listed_on, source``: mostly people in neither bank,
  plus about 10% drawn from each bank's customers.
* ``expected.json`` — the true intersection sizes and the parameters used.

Everything derives from ``random.Random(seed)`` and a fixed 64-bit mixer, so one seed always
gives byte-identical files. Uniqueness of keys is by construction, not by retry: person ``e``
gets ID ``decode((a*e + c) mod N)`` for an affine bijection of the ID space, and the same for
phones and e-mail suffixes. Rows are written as they are generated (only a shuffled index list
is held), so 10^6 rows per bank need tens of MB, not the table.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any, Iterator

__all__ = ["generate", "validate_id_number", "id_check_character", "REGIONS", "MOBILE_PREFIXES"]

#: Real county-level administrative division codes (GB/T 2260) with a city label for branches.
REGIONS: tuple[tuple[str, str], ...] = (
    ("110101", "Beijing-Dongcheng"), ("110105", "Beijing-Chaoyang"), ("110108", "Beijing-Haidian"),
    ("120101", "Tianjin-Heping"), ("130102", "Shijiazhuang-Chang'an"), ("140105", "Taiyuan-Xiaodian"),
    ("150102", "Hohhot-Xincheng"), ("210102", "Shenyang-Heping"), ("220102", "Changchun-Nanguan"),
    ("230102", "Harbin-Daoli"), ("310101", "Shanghai-Huangpu"), ("310104", "Shanghai-Xuhui"),
    ("310115", "Shanghai-Pudong"), ("320102", "Nanjing-Xuanwu"), ("320505", "Suzhou-Huqiu"),
    ("330102", "Hangzhou-Shangcheng"), ("330106", "Hangzhou-Xihu"), ("340102", "Hefei-Yaohai"),
    ("350102", "Fuzhou-Gulou"), ("350203", "Xiamen-Siming"), ("360102", "Nanchang-Donghu"),
    ("370102", "Jinan-Lixia"), ("370202", "Qingdao-Shinan"), ("410105", "Zhengzhou-Jinshui"),
    ("420102", "Wuhan-Jiang'an"), ("430104", "Changsha-Yuelu"), ("440103", "Guangzhou-Liwan"),
    ("440106", "Guangzhou-Tianhe"), ("440305", "Shenzhen-Nanshan"), ("450103", "Nanning-Qingxiu"),
    ("460106", "Haikou-Longhua"), ("500103", "Chongqing-Yuzhong"), ("510104", "Chengdu-Jinjiang"),
    ("520102", "Guiyang-Nanming"), ("530102", "Kunming-Wuhua"), ("540102", "Lhasa-Chengguan"),
    ("610113", "Xi'an-Yanta"), ("620102", "Lanzhou-Chengguan"), ("630102", "Xining-Chengdong"),
    ("640104", "Yinchuan-Xingqing"), ("650102", "Urumqi-Tianshan"),
)
MOBILE_PREFIXES: tuple[str, ...] = (
    "130", "131", "132", "133", "134", "135", "136", "137", "138", "139", "150", "151", "152",
    "153", "155", "156", "157", "158", "159", "166", "173", "175", "176", "177", "178", "180",
    "181", "182", "183", "184", "185", "186", "187", "188", "189", "191", "198", "199",
)
_SURNAMES = (("王", "wang"), ("李", "li"), ("张", "zhang"), ("刘", "liu"), ("陈", "chen"), ("杨", "yang"),
             ("黄", "huang"), ("赵", "zhao"), ("吴", "wu"), ("周", "zhou"), ("徐", "xu"), ("孙", "sun"),
             ("马", "ma"), ("朱", "zhu"), ("胡", "hu"), ("郭", "guo"), ("何", "he"), ("林", "lin"),
             ("高", "gao"), ("罗", "luo"), ("郑", "zheng"), ("梁", "liang"), ("谢", "xie"), ("宋", "song"))
_GIVEN = (("伟", "wei"), ("芳", "fang"), ("娜", "na"), ("敏", "min"), ("静", "jing"), ("丽", "li"),
          ("强", "qiang"), ("磊", "lei"), ("军", "jun"), ("洋", "yang"), ("勇", "yong"), ("艳", "yan"),
          ("杰", "jie"), ("娟", "juan"), ("涛", "tao"), ("明", "ming"), ("超", "chao"), ("秀英", "xiuying"),
          ("霞", "xia"), ("平", "ping"), ("刚", "gang"), ("桂英", "guiying"), ("华", "hua"), ("建国", "jianguo"),
          ("晨", "chen"), ("浩", "hao"), ("宇", "yu"), ("欣怡", "xinyi"), ("子涵", "zihan"), ("思远", "siyuan"))
_DOMAINS = ("163.com", "126.com", "qq.com", "sina.com", "foxmail.com", "outlook.com", "gmail.com", "yeah.net")
_REASONS = (("fraud", 30), ("overdue-90d", 35), ("aml-watch", 15), ("sanctions", 5),
            ("identity-theft", 8), ("court-enforcement", 7))
_SOURCES = ("internal", "pboc-credit", "consortium", "court", "police-notice")
_SEGMENTS = ("mass", "mass", "mass", "affluent", "affluent", "private", "sme-owner")

_WEIGHTS = [pow(2, 17 - i, 11) for i in range(17)]
_CHECK = "10X98765432"
_BIRTH_FIRST = dt.date(1950, 1, 1)
_BIRTH_DAYS = (dt.date(2005, 12, 31) - _BIRTH_FIRST).days + 1
_TODAY = dt.date(2026, 1, 1)  # fixed "as of" date so ages do not change with the clock
_ID_SPACE = len(REGIONS) * _BIRTH_DAYS * 1000
_PHONE_SPACE = len(MOBILE_PREFIXES) * 10**8
_MASK64 = (1 << 64) - 1


def id_check_character(first17: str) -> str:
    """ISO 7064 MOD 11-2 check character for the first 17 digits of an ID number."""
    total = sum(int(d) * w for d, w in zip(first17, _WEIGHTS))
    return _CHECK[total % 11]


def validate_id_number(value: str) -> bool:
    """True for a well-formed 18-character resident ID: digits, real date, right check character.

    The check character may be ``X`` or ``x``. The region code is only checked for shape
    (first digit 1-9), not against the full GB/T 2260 list.
    """
    if not isinstance(value, str) or len(value) != 18:
        return False
    body, check = value[:17], value[17].upper()
    if not (body.isascii() and body.isdigit()) or body[0] == "0":
        return False
    try:
        born = dt.date(int(body[6:10]), int(body[10:12]), int(body[12:14]))
    except ValueError:
        return False
    if born.year < 1900:
        return False
    return id_check_character(body) == check


def _mix(value: int) -> int:
    """splitmix64 finaliser: a fixed, well-spread 64-bit hash of an integer."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


class _Affine:
    """A bijection of ``range(size)``: x -> (a*x + c) mod size with gcd(a, size) = 1."""

    def __init__(self, rng: random.Random, size: int) -> None:
        self.size = size
        while True:
            a = rng.randrange(size // 3, size - 1) | 1
            if math.gcd(a, size) == 1:
                break
        self.a, self.c = a, rng.randrange(size)

    def __call__(self, x: int) -> int:
        return (self.a * x + self.c) % self.size


class _People:
    """Attributes of person ``e`` that every table agrees on (keys, name, birth date)."""

    def __init__(self, rng: random.Random, population: int) -> None:
        self.salt = rng.getrandbits(64)
        self.id_map = _Affine(rng, _ID_SPACE)
        self.phone_map = _Affine(rng, _PHONE_SPACE)
        suffix_space = 10 ** max(4, len(str(population)))
        self.email_map = _Affine(rng, suffix_space)
        if population > min(_ID_SPACE, suffix_space):
            raise ValueError("too many people for the key spaces")

    def id_number(self, e: int) -> tuple[str, dt.date, int]:
        x = self.id_map(e)
        x, sequence = divmod(x, 1000)
        region, day = divmod(x, _BIRTH_DAYS)
        born = _BIRTH_FIRST + dt.timedelta(days=day)
        body = f"{REGIONS[region][0]}{born:%Y%m%d}{sequence:03d}"
        return body + id_check_character(body), born, region

    def phone(self, e: int) -> str:
        prefix, rest = divmod(self.phone_map(e), 10**8)
        return f"{MOBILE_PREFIXES[prefix]}{rest:08d}"

    def person(self, e: int) -> dict[str, Any]:
        id_number, born, region = self.id_number(e)
        h = _mix(self.salt ^ e)
        surname = _SURNAMES[h % len(_SURNAMES)]
        given = _GIVEN[(h >> 8) % len(_GIVEN)]
        domain = _DOMAINS[(h >> 16) % len(_DOMAINS)]
        style = (h >> 24) % 3
        local = (given[1] + "." + surname[1], surname[1] + given[1], given[1] + surname[1])[style]
        age = _TODAY.year - born.year - ((_TODAY.month, _TODAY.day) < (born.month, born.day))
        return {
            "id_number": id_number,
            "phone": self.phone(e),
            "email": f"{local}{self.email_map(e)}@{domain}",
            "name": surname[0] + given[0],
            "gender": "M" if int(id_number[16]) % 2 else "F",
            "age": age,
            "branch": REGIONS[region][1] if (h >> 32) % 4 else REGIONS[(h >> 40) % len(REGIONS)][1],
            "born": born,
        }


def _open_csv(path: Path) -> tuple[Any, Any]:
    handle = open(path, "w", encoding="utf-8", newline="", buffering=1 << 20)
    return handle, csv.writer(handle, lineterminator="\n")


def _bank_a_rows(people: _People, rng: random.Random, entities: Iterator[int]) -> Iterator[list[Any]]:
    for serial, e in enumerate(entities):
        p = people.person(e)
        balance = round(rng.lognormvariate(9.5, 1.6), 2)
        opened = dt.date(2005, 1, 1) + dt.timedelta(days=rng.randrange(7300))
        yield [f"A{serial + 1:010d}", p["name"], p["id_number"], p["phone"], p["email"], p["gender"],
               p["age"], p["branch"], f"{balance:.2f}", opened.isoformat()]


def _bank_b_rows(people: _People, rng: random.Random, entities: Iterator[int]) -> Iterator[list[Any]]:
    for serial, e in enumerate(entities):
        p = people.person(e)
        limit = rng.choice((0, 5000, 10000, 20000, 30000, 50000, 100000))
        yield [f"B-{serial + 1:08d}", p["name"], p["id_number"], p["phone"], p["email"], p["age"],
               rng.choice(_SEGMENTS), rng.randrange(300, 851), limit, p["branch"].split("-")[0]]


BANK_A_HEADER = ["customer_no", "name", "id_number", "phone", "email", "gender", "age", "branch", "balance", "opened_on"]
BANK_B_HEADER = ["cust_id", "name", "id_number", "phone", "email", "age", "segment", "credit_score", "credit_limit", "city"]
BLACKLIST_HEADER = ["id_number", "reason", "listed_on", "source"]


def generate(
    out_dir: str | os.PathLike[str],
    rows: int,
    overlap: float,
    seed: int,
    blacklist_rows: int | None = None,
    *,
    rows_b: int | None = None,
) -> dict[str, Any]:
    """Write bank_a.csv, bank_b.csv, blacklist.csv and expected.json into ``out_dir``.

    ``rows`` customers per bank (``rows_b`` for bank B if different); ``round(overlap *
    min(rows, rows_b))`` of them are in both banks. ``blacklist_rows`` defaults to 20,000
    (about 10% taken from each bank's customers, the rest people in neither bank).
    Returns the summary that is also written to expected.json.
    """
    rows_a = int(rows)
    rows_b = rows_a if rows_b is None else int(rows_b)
    if rows_a < 0 or rows_b < 0:
        raise ValueError("row counts must not be negative")
    if not 0.0 <= overlap <= 1.0:
        raise ValueError("overlap must be between 0 and 1")
    blacklist_rows = 20_000 if blacklist_rows is None else int(blacklist_rows)
    if blacklist_rows < 0:
        raise ValueError("blacklist_rows must not be negative")
    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    shared = round(overlap * min(rows_a, rows_b))
    only_b = rows_b - shared
    # people: [0, shared) both banks, [shared, rows_a) bank A only,
    # [rows_a, rows_a + only_b) bank B only, then blacklist-only people
    population = rows_a + only_b + blacklist_rows
    people = _People(rng, max(population, 1))

    def b_entity(i: int) -> int:
        return i if i < shared else rows_a + (i - shared)

    order_a = list(range(rows_a))
    rng.shuffle(order_a)
    order_b = list(range(rows_b))
    rng.shuffle(order_b)
    files = {"bank_a": out / "bank_a.csv", "bank_b": out / "bank_b.csv", "blacklist": out / "blacklist.csv"}

    handle, writer = _open_csv(files["bank_a"])
    with handle:
        writer.writerow(BANK_A_HEADER)
        writer.writerows(_bank_a_rows(people, random.Random(rng.getrandbits(64)), iter(order_a)))
    del order_a
    handle, writer = _open_csv(files["bank_b"])
    with handle:
        writer.writerow(BANK_B_HEADER)
        writer.writerows(_bank_b_rows(people, random.Random(rng.getrandbits(64)),
                                      (b_entity(i) for i in order_b)))
    del order_b

    # blacklist: ~10% from each bank, the rest fresh people; at most a fifth of a bank is listed
    # (the committed sample, 20,000 entries for 10,000 customers, sits exactly at that cap)
    from_a = min(blacklist_rows // 10, rows_a // 5)
    from_b = min(blacklist_rows // 10, rows_b // 5)
    listed = set(rng.sample(range(rows_a), from_a))
    listed.update(b_entity(i) for i in rng.sample(range(rows_b), from_b))
    listed_list = sorted(listed)[:blacklist_rows]
    fresh_start = rows_a + only_b
    listed_list.extend(range(fresh_start, fresh_start + blacklist_rows - len(listed_list)))
    rng.shuffle(listed_list)
    in_a = sum(1 for e in listed_list if e < rows_a)
    in_b = sum(1 for e in listed_list if e < shared or rows_a <= e < rows_a + only_b)
    in_both = sum(1 for e in listed_list if e < shared)
    reasons = [r for r, _w in _REASONS]
    weights = [w for _r, w in _REASONS]
    handle, writer = _open_csv(files["blacklist"])
    with handle:
        writer.writerow(BLACKLIST_HEADER)
        for e in listed_list:
            listed_on = dt.date(2015, 1, 1) + dt.timedelta(days=rng.randrange(3987))
            writer.writerow([people.id_number(e)[0], rng.choices(reasons, weights)[0],
                             listed_on.isoformat(), rng.choice(_SOURCES)])

    summary: dict[str, Any] = {
        "seed": seed,
        "rows": {"bank_a": rows_a, "bank_b": rows_b, "blacklist": len(listed_list)},
        "overlap": overlap,
        "keys": ["id_number", "phone", "email"],
        "intersection": {"bank_a&bank_b": shared, "bank_a&blacklist": in_a,
                         "bank_b&blacklist": in_b, "bank_a&bank_b&blacklist": in_both},
        "note": "every key column (id_number, phone, email) gives the same intersections; "
                "all keys are unique within each file",
        "files": {name: path.name for name, path in files.items()},
    }
    (out / "expected.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    summary["seconds"] = round(time.perf_counter() - started, 3)
    return summary
