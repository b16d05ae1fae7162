"""Key normalisation options and their CLI spelling."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from psi.errors import MalformedMessage, UsageError
from psi.normalize import KeyNormalizationError, Normalization


def test_defaults_trim_only() -> None:
    norm = Normalization()
    assert norm.apply("  AbC \t") == "AbC"
    assert norm.apply("\u3000 abc\u200b") == "abc"
    assert Normalization(trim=False).apply(" a ") == " a "
    assert Normalization(trim=False).is_identity


def test_fullwidth_digits_and_symbols() -> None:
    norm = Normalization(fullwidth=True)
    assert norm.apply("１３８００１３８０００") == "13800138000"
    assert norm.apply("ｚｈａｎｇ＠１６３．ｃｏｍ") == "zhang@163.com"
    assert norm.apply("１１０１０１１９９００３０７１２３Ｘ") == "11010119900307123X"
    # only the ASCII block: Chinese text and other compatibility characters are untouched
    assert norm.apply("张伟①") == "张伟①"
    assert Normalization().apply("１３８") == "１３８"


def test_fullwidth_space_is_trimmed() -> None:
    assert Normalization(fullwidth=True).apply("\u3000１２３\u3000") == "123"


def test_casefold_mixed_case() -> None:
    norm = Normalization(casefold=True)
    assert norm.apply(" Zhang.Wei@QQ.COM ") == "zhang.wei@qq.com"
    assert norm.apply("11010119900307123X") == norm.apply("11010119900307123x")
    assert norm.apply("STRASSE") == norm.apply("straße")


@pytest.mark.parametrize(
    "raw",
    [
        "13800138000",
        "138 0013 8000",
        "138-0013-8000",
        "138.0013.8000",
        "(138) 0013-8000",
        "+86 138 0013 8000",
        "+86-13800138000",
        "0086 13800138000",
        "008613800138000",
        "8613800138000",
        " +86 (138) 0013.8000 ",
    ],
)
def test_phone_forms(raw: str) -> None:
    assert Normalization(phone=True).apply(raw) == "13800138000"


def test_phone_fullwidth_needs_fullwidth() -> None:
    raw = "＋８６ １３８－００１３－８０００"
    assert Normalization(phone=True, fullwidth=True).apply(raw) == "13800138000"


def test_phone_keeps_other_country_codes_and_landlines() -> None:
    norm = Normalization(phone=True)
    assert norm.apply("+1 555-0100") == "+15550100"
    assert norm.apply("010-6552 8888") == "01065528888"
    assert norm.apply("86123") == "86123"  # too short to be 86 + mobile


def test_regex_group_and_whole_match() -> None:
    assert Normalization(regex=r"ID:(\d+)").apply("ID:12345 (main)") == "12345"
    assert Normalization(regex=r"\d{3}").apply("ab1234") == "123"
    with pytest.raises(KeyNormalizationError):
        Normalization(regex=r"^\d+$").apply("abc")


def test_bad_regex_is_usage_error() -> None:
    with pytest.raises(UsageError, match="bad key regex"):
        Normalization(regex="(")


def test_parse() -> None:
    assert Normalization.parse(None) == Normalization()
    assert Normalization.parse("") == Normalization()
    assert Normalization.parse("trim,casefold,fullwidth,phone") == Normalization(
        trim=True, casefold=True, fullwidth=True, phone=True
    )
    assert Normalization.parse("casefold") == Normalization(casefold=True)
    assert Normalization.parse("none,phone") == Normalization(trim=False, phone=True)
    assert Normalization.parse("no-trim") == Normalization(trim=False)
    assert Normalization.parse(" Phone , FULLWIDTH ") == Normalization(phone=True, fullwidth=True)
    assert Normalization.parse("trim", regex=r"(\d+)").regex == r"(\d+)"
    with pytest.raises(UsageError, match="unknown normalisation option 'lower'"):
        Normalization.parse("lower")


def test_params_round_trip_and_equality() -> None:
    norm = Normalization(casefold=True, regex="(x)")
    params = norm.to_params()
    assert params == {"version": 1, "trim": True, "casefold": True, "fullwidth": False, "phone": False, "regex": "(x)"}
    assert Normalization.from_params(params) == norm
    assert Normalization(casefold=True).to_params() != Normalization().to_params()
    with pytest.raises(MalformedMessage):
        Normalization.from_params({**params, "trim": "yes"})
    with pytest.raises(MalformedMessage):
        Normalization.from_params({**params, "version": 99})
    with pytest.raises(MalformedMessage):
        Normalization.from_params({**params, "regex": "("})


def test_trim_mixed_zero_width_and_spaces() -> None:
    assert Normalization().apply("\u200b \u200b a \ufeff ") == "a"


@given(st.text(alphabet=st.sampled_from(" \t\u3000\u200b\ufeffaZ１Ａ@-.()+86")) | st.text())
def test_apply_is_idempotent(value: str) -> None:
    # phone is left out on purpose: "+86+86..." loses one country code per application
    norm = Normalization(trim=True, casefold=True, fullwidth=True)
    once = norm.apply(value)
    assert norm.apply(once) == once


# -- apply_many is apply, value by value --------------------------------------------------------
_SETTINGS = [Normalization(), Normalization(trim=False), Normalization(fullwidth=True, casefold=True),
             Normalization(phone=True), Normalization(regex=r"(\d+)"), Normalization(regex=r"[a-z]+", casefold=True),
             Normalization(fullwidth=True, phone=True)]
_TEXT = st.text(alphabet=st.sampled_from(list(" \t\u3000\u200b\ufeff\xa0\x1c1２aＡß-+86()x张")), max_size=8)


@settings(max_examples=300, deadline=None)
@given(values=st.lists(_TEXT, max_size=6), norm=st.sampled_from(_SETTINGS))
def test_apply_many_matches_apply(values: list[str], norm: Normalization) -> None:
    try:
        expected = [norm.apply(v) for v in values]
    except KeyNormalizationError:
        with pytest.raises(KeyNormalizationError):
            norm.apply_many(values)
        return
    assert norm.apply_many(values) == expected
