"""core/jsonsafe.py: what it refuses (and says why), what it keeps exactly as json.loads would, and its depth scan."""
from __future__ import annotations

import json
import math
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.jsonsafe import MAX_DEPTH, JsonInputError, loads, nesting_depth


def test_valid_json_is_parsed_from_bytes_and_text():
    document = '{"a": [1, 2.5, -0.0, 1e300, "x\\u00e9\\ud83d\\ude00", true, null], "b": {"c": {}}}'
    expected = json.loads(document)
    assert loads(document) == expected
    assert loads(document.encode("utf-8")) == expected
    assert loads(bytearray(document.encode())) == expected
    assert loads(document)["a"][4] == "xé\U0001F600"  # a valid pair is one character


@pytest.mark.parametrize("data, problem", [
    (b'{"a": "\xff"}', "not UTF-8"),
    (b"\xc3", "not UTF-8"),
    (b'"\xed\xa0\xbd"', "not UTF-8"),  # a surrogate encoded in UTF-8 is not UTF-8
    ('"\\ud83d"', "lone surrogate U+D83D at $"),
    ('{"events": [{"text": "hi \\ude00"}]}', "lone surrogate U+DE00 at $.events[0].text"),
    ('{"\\udc00": 1}', "lone surrogate U+DC00 in a member name at $"),
    ('["\\ude00\\ud83d"]', "lone surrogate U+DE00 at $[0]"),  # the wrong order is not a pair
    ("\"\ud83d\"", "lone surrogate U+D83D"),  # a str holding one
    ('{"digits": "1\\u00002"}', "NUL character U+0000 at $.digits"),  # PostgreSQL text refuses it
    ('{"\\u0000": 1}', "NUL character U+0000 in a member name at $"),
    ("NaN", "non-finite number NaN"),
    ('{"n": Infinity}', "non-finite number Infinity"),
    ("[-Infinity]", "non-finite number -Infinity"),
    ('{"n": 1e400}', "non-finite number 1e400"),
    ("-1E+999", "non-finite number -1E+999"),
    ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), f"nesting deeper than {MAX_DEPTH}"),
    ('{"a":' * 20_000, f"nesting deeper than {MAX_DEPTH}"),
    ("", "not valid JSON"),
    ("{'a': 1}", "not valid JSON"),
    ('{"a": 1} x', "not valid JSON"),
    ('"\\x41"', "not valid JSON"),
])
def test_refusals_name_the_problem(data, problem):
    with pytest.raises(JsonInputError) as refused:
        loads(data)
    assert problem in str(refused.value)
    assert isinstance(refused.value, ValueError)  # callers that catch ValueError keep working


def test_nesting_of_exactly_the_limit_is_accepted():
    document = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    value = loads(document)
    for _ in range(MAX_DEPTH - 1):
        value = value[0]
    assert value == []


def test_brackets_inside_strings_do_not_count():
    inside = '"' + "[" * 500 + '\\"' + "{" * 500 + '"'
    assert nesting_depth(inside) == 0
    assert loads("[" + inside + "]") == ["[" * 500 + '"' + "{" * 500]
    assert nesting_depth('["\\\\", [["]"]]]') == 3  # an escaped backslash ends before the quote


def test_a_deep_document_is_refused_quickly_without_recursion():
    document = "[" * 20_000 + "]" * 20_000
    started = time.perf_counter()
    with pytest.raises(JsonInputError, match="nesting"):
        loads(document)
    assert time.perf_counter() - started < 0.5
    assert nesting_depth("[" * 1_000_000) == 1_000_000  # linear, no recursion limit


def test_huge_integers_are_kept_and_too_long_ones_refused():
    assert loads("1" + "0" * 400) == 10**400  # an integer never becomes inf
    with pytest.raises(JsonInputError, match="not valid JSON"):
        loads("1" * 5000)  # beyond Python's digit limit for int()


# --- properties -------------------------------------------------------------------------------------

# Values json.loads can return that a database and a JSON answer can hold.
finite = st.floats(allow_nan=False, allow_infinity=False)
storable_text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"))
scalars = st.none() | st.booleans() | st.integers() | finite | storable_text
storable = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(storable_text, inner, max_size=4),
                        max_leaves=30)


def depth(value) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    return 0


@settings(max_examples=300, deadline=None)
@given(storable, st.booleans(), st.booleans())
def test_storable_values_round_trip(value, ensure_ascii, as_bytes):
    text = json.dumps(value, ensure_ascii=ensure_ascii)  # ensure_ascii writes pairs as \ud83d\ude00
    parsed = loads(text.encode("utf-8") if as_bytes else text)
    assert parsed == json.loads(text)
    assert nesting_depth(text) == depth(value)


@settings(max_examples=300, deadline=None)
@given(storable, st.integers(0xD800, 0xDFFF))
def test_a_lone_surrogate_anywhere_is_refused(value, surrogate):
    text = json.dumps(["\u0000marker", value])
    text = text.replace("\\u0000marker", f"\\u{surrogate:04x}", 1)
    with pytest.raises(JsonInputError, match="lone surrogate"):
        loads(text)


@settings(max_examples=300, deadline=None)
@given(storable, st.integers(0, 3))
def test_a_nul_character_anywhere_is_refused(value, where):
    text = json.dumps([value, "a\u0000b"][where % 2:] + [{"\u0000": where}][: where // 2])
    with pytest.raises(JsonInputError, match="NUL character U\\+0000"):
        loads(text)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200) | st.text("[]{}\"\\,:1 ", max_size=300))
def test_anything_is_a_value_or_a_json_input_error(data):
    try:
        value = loads(data)
    except JsonInputError as exc:
        assert str(exc)
        return
    # What is accepted can be stored and sent back: UTF-8 encodable, finite, not too deep.
    json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")
    assert depth(value) <= MAX_DEPTH


@settings(max_examples=200, deadline=None)
@given(st.integers(MAX_DEPTH + 1, 5000), st.sampled_from(["[", '{"k":']))
def test_any_depth_over_the_limit_is_refused(levels, opener):
    with pytest.raises(JsonInputError, match="nesting"):
        loads(opener * levels + "1" + ("]" if opener == "[" else "}") * levels)


def test_floats_that_stay_finite_are_kept():
    assert loads("1.7976931348623157e308") == 1.7976931348623157e308
    assert loads("1e-400") == 0.0
    assert math.isfinite(loads("123456789.123456789e-5"))
