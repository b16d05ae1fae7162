"""Key normalisation: make two banks' spellings of the same key compare equal.

Both parties must normalise identically, so the settings travel in the handshake
(:meth:`Normalization.to_params`) and a mismatch stops the session before any data moves.

Steps, applied in this fixed order (each one only when switched on):

1. ``fullwidth`` (off by default) — map the full-width ASCII block U+FF01..U+FF5E to ASCII and
   the ideographic space U+3000 to a space: ``'１３８'`` -> ``'138'``, ``'＠'`` -> ``'@'``.
   This is NFKC restricted to those characters; other NFKC folds (``'①'`` -> ``'1'``,
   ligatures, half-width katakana) are deliberately *not* applied, so Chinese names and other
   text pass through unchanged.
2. ``trim`` (on by default) — strip leading and trailing whitespace (Unicode whitespace,
   including U+3000) and stray zero-width characters (U+200B, U+FEFF) that spreadsheet
   exports leave behind. Inner spaces are kept.
3. ``regex`` (none by default) — search the value for the pattern and keep the first capture
   group, or the whole match when the pattern has no group. A value that does not match
   raises :class:`KeyNormalizationError` (the file reader turns that into an error naming the
   line, or a skipped row with ``skip_empty``).
4. ``phone`` (off by default) — remove spaces, dashes, dots, slashes and parentheses, then a
   leading China country code: ``+86``, ``0086``, and a bare ``86`` when what follows is an
   11-digit mobile number starting with ``1`` (so ``8613800138000`` -> ``13800138000``).
   Other ``+`` country codes are kept as written (``+1 555-0100`` -> ``+15550100``). Turn
   ``fullwidth`` on as well when phone numbers may be typed with full-width digits.
5. ``casefold`` (off by default) — Unicode case folding (``str.casefold``), stronger than
   ``lower()``: use it for e-mail addresses, and for ID numbers whose check character may be
   written ``x`` or ``X`` (both become ``x``).

Defaults are conservative: only ``trim`` is on, because every other fold can merge values a
bank considers distinct. The CLI spelling is ``--normalize trim,casefold,fullwidth,phone``
(see :meth:`Normalization.parse`) plus ``--key-regex PATTERN``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import MalformedMessage, UsageError

__all__ = ["Normalization", "KeyNormalizationError", "NORMALIZATION_VERSION"]

#: Bumped whenever the meaning of an option changes, so old and new builds refuse each other.
NORMALIZATION_VERSION = 1

_FULLWIDTH = {code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)}
_FULLWIDTH[0x3000] = 0x20
_TRIM_CHARS = "\u200b\ufeff"
_PHONE_STRIP = str.maketrans("", "", " \t-./()\u00a0")
_OPTIONS = ("trim", "casefold", "fullwidth", "phone")


class KeyNormalizationError(ValueError):
    """A value could not be normalised (it does not match the key regex)."""


def _fullwidth(value: str) -> str:
    return value.translate(_FULLWIDTH)


_TRIM_RE = re.compile(r"^[\s\u200b\ufeff]+|[\s\u200b\ufeff]+$")


def _trim(value: str) -> str:
    value = value.strip()
    if value and (value[0] in _TRIM_CHARS or value[-1] in _TRIM_CHARS):
        value = _TRIM_RE.sub("", value)
    return value


def _phone(value: str) -> str:
    digits = value.translate(_PHONE_STRIP)
    if digits.startswith("+86"):
        return digits[3:]
    if digits.startswith("0086"):
        return digits[4:]
    if len(digits) == 13 and digits.startswith("861") and digits.isdigit():
        return digits[2:]
    return digits


@dataclass(frozen=True)
class Normalization:
    """Which folds to apply to every key value; see the module docstring for each option.

    Immutable and hashable; ``apply`` is safe to call from many threads.
    """

    trim: bool = True
    casefold: bool = False
    fullwidth: bool = False
    phone: bool = False
    regex: str | None = None
    _steps: tuple[Callable[[str], str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        steps: list[Callable[[str], str]] = []
        if self.fullwidth:
            steps.append(_fullwidth)
        if self.trim:
            steps.append(_trim)
        if self.regex is not None:
            if not isinstance(self.regex, str) or not self.regex:
                raise UsageError("the key regex must be a non-empty string")
            try:
                pattern = re.compile(self.regex)
            except re.error as err:
                raise UsageError(f"bad key regex {self.regex!r}: {err}") from None
            group = 1 if pattern.groups else 0

            def _extract(value: str, _search=pattern.search, _group=group) -> str:
                match = _search(value)
                if match is None:
                    raise KeyNormalizationError("value does not match the key regex")
                return match.group(_group) or ""

            steps.append(_extract)
        if self.phone:
            steps.append(_phone)
        if self.casefold:
            steps.append(str.casefold)
        object.__setattr__(self, "_steps", tuple(steps))

    def apply(self, value: str) -> str:
        """Return the normalised ``value``; raises :class:`KeyNormalizationError` on no match."""
        for step in self._steps:
            value = step(value)
        return value

    def apply_many(self, values: list[str]) -> list[str]:
        """``[self.apply(v) for v in values]``, one pass per step (much faster for many values).

        Raises :class:`KeyNormalizationError` if any value does not match the key regex (the
        caller then falls back to :meth:`apply` per value to find which one).
        """
        for step in self._steps:
            if step is _trim:
                stripped = list(map(str.strip, values))
                joined = "".join(stripped)
                if "\u200b" in joined or "\ufeff" in joined:
                    stripped = list(map(_trim, stripped))
                values = stripped
            else:
                values = list(map(step, values))
        return values

    @property
    def is_identity(self) -> bool:
        """True when ``apply`` returns its argument unchanged."""
        return not self._steps

    def to_params(self) -> dict[str, Any]:
        """The settings as a JSON-able dict for the handshake (both sides must send equal ones)."""
        return {
            "version": NORMALIZATION_VERSION,
            "trim": self.trim,
            "casefold": self.casefold,
            "fullwidth": self.fullwidth,
            "phone": self.phone,
            "regex": self.regex,
        }

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "Normalization":
        """Inverse of :meth:`to_params` for a peer's settings (validated)."""
        if not isinstance(params, dict) or params.get("version") != NORMALIZATION_VERSION:
            raise MalformedMessage("normalisation settings missing or of another version")
        flags = {}
        for name in _OPTIONS:
            value = params.get(name)
            if not isinstance(value, bool):
                raise MalformedMessage(f"normalisation option {name!r} is not a boolean")
            flags[name] = value
        regex = params.get("regex")
        if regex is not None and not isinstance(regex, str):
            raise MalformedMessage("normalisation regex is not a string")
        try:
            return cls(regex=regex, **flags)
        except UsageError as err:
            raise MalformedMessage(f"peer sent an unusable key regex ({err})") from None

    @classmethod
    def parse(cls, spec: str | None, regex: str | None = None) -> "Normalization":
        """Build from a CLI option such as ``"trim,casefold,fullwidth,phone"``.

        Names are read left to right starting from the defaults (``trim`` on, the rest off):
        a name switches that option on, ``no-NAME`` switches it off, ``none`` switches every
        option off and ``default`` restores the defaults. So ``"casefold"`` means trim +
        casefold and ``"none,phone"`` means phone only. ``None`` or ``""`` gives the defaults.
        ``regex`` is the separate ``--key-regex`` option.
        """
        flags = {"trim": True, "casefold": False, "fullwidth": False, "phone": False}
        for raw in (spec or "").split(","):
            word = raw.strip().lower().replace("_", "-")
            if not word:
                continue
            if word == "none":
                flags = dict.fromkeys(flags, False)
            elif word == "default":
                flags = {"trim": True, "casefold": False, "fullwidth": False, "phone": False}
            elif word in flags:
                flags[word] = True
            elif word.startswith("no-") and word[3:] in flags:
                flags[word[3:]] = False
            else:
                known = ", ".join((*_OPTIONS, "none", "default", "no-trim"))
                raise UsageError(f"unknown normalisation option {raw.strip()!r} (known: {known})")
        return cls(regex=regex or None, **flags)

    def describe(self) -> str:
        """Short human-readable form, e.g. ``trim,casefold regex='^(\\d+)'``."""
        names = [name for name in _OPTIONS if getattr(self, name)]
        text = ",".join(names) or "none"
        return f"{text} regex={self.regex!r}" if self.regex else text
