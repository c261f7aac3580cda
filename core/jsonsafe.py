"""JSON from outside (carriers, clients, providers): parsed only when every value can be stored and echoed back.

`loads` refuses, with a JsonInputError naming the problem, what `json.loads` accepts or chokes on
but no database column or JSON answer can hold: bytes that are not UTF-8, lone surrogates
("\\ud83d": SQLite cannot encode them, PostgreSQL refuses them), the NUL character ("\\u0000":
PostgreSQL text and jsonb refuse it), NaN / Infinity and numbers that
overflow to infinity (1e400), and nesting deeper than MAX_DEPTH, which is found by a bracket scan
before the recursive parser ever sees the document (a 20,000-deep one would raise RecursionError).
"""
from __future__ import annotations

import json
import math
import re
from itertools import accumulate
from typing import Any

MAX_DEPTH = 64

# A complete JSON string (escapes included), written so the regex engine never backtracks into it.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
_SURROGATE = re.compile("[\ud800-\udfff]")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")  # what a parsed string must not hold
# A \u escape of NUL or of a surrogate (possibly part of a valid pair); only a hint that the parsed
# strings need a look. A raw NUL is not JSON inside a string, and outside one the parser refuses it.
_UNSTORABLE_ESCAPE = re.compile(r"\\u(?:0000|[dD][89abcdefABCDEF])")


class JsonInputError(ValueError):
    """Input that is not storable JSON; the message says why."""


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """The JSON value of `data`, or JsonInputError (not UTF-8, lone surrogate, non-finite number,
    nesting deeper than MAX_DEPTH, not valid JSON)."""
    if isinstance(data, str):
        text = data
        found = None if text.isascii() else _SURROGATE.search(text)
        if found:
            raise JsonInputError(f"lone surrogate {_codepoint(found.group())} in the text")
    else:
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JsonInputError(f"not UTF-8 (invalid byte at position {exc.start})") from None
    # Counting openers is far cheaper than the scan and settles most documents (a media frame has 2).
    if text.count("[") + text.count("{") > MAX_DEPTH and nesting_depth(text) > MAX_DEPTH:
        raise JsonInputError(f"nesting deeper than {MAX_DEPTH} levels")
    try:
        value = _DECODER.decode(text)
    except JsonInputError:
        raise
    except RecursionError:  # the scan bounds the depth; kept so nothing can escape as a crash
        raise JsonInputError(f"nesting deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:
        raise JsonInputError(f"not valid JSON ({exc})") from None
    if "\\u" in text and _UNSTORABLE_ESCAPE.search(text):
        where = _unstorable(value, "$")
        if where is not None:
            raise JsonInputError(where)
    return value


def nesting_depth(text: str) -> int:
    """The deepest bracket nesting of `text`, strings skipped; linear, no recursion.

    An unterminated string counts its brackets: the document is not JSON either way.
    """
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def _constant(name: str) -> Any:
    raise JsonInputError(f"non-finite number {name}")


def _float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise JsonInputError(f"non-finite number {literal[:40]} (overflows)")
    return value


# One decoder for every call: json.loads with hooks would build a new one each time.
_DECODER = json.JSONDecoder(parse_constant=_constant, parse_float=_float)


def _codepoint(char: str) -> str:
    return f"U+{ord(char):04X}"


def _named(char: str) -> str:
    return f"{'NUL character' if char == chr(0) else 'lone surrogate'} {_codepoint(char)}"


def _unstorable(value: Any, path: str) -> str | None:
    """What and where the first unstorable character is ("lone surrogate U+D83D at $.events[0].text"),
    or None. Depth is bounded by the scan."""
    if isinstance(value, str):
        found = _UNSTORABLE.search(value)
        return f"{_named(found.group())} at {path}" if found else None
    if isinstance(value, list):
        for index, item in enumerate(value):
            where = _unstorable(item, f"{path}[{index}]")
            if where:
                return where
    elif isinstance(value, dict):
        for key, item in value.items():
            found = _UNSTORABLE.search(key)
            if found:
                return f"{_named(found.group())} in a member name at {path}"
            where = _unstorable(item, f"{path}.{key[:40]}")
            if where:
                return where
    return None
