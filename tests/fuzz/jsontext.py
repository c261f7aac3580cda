"""JSON documents as text, with values no JSON encoder writes spliced in (NaN, 1e400, lone surrogates, deep nesting)."""
from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st


class Raw(str):
    """JSON text written as it is."""


NASTY = tuple(Raw(text) for text in (
    "NaN", "Infinity", "-Infinity", "1e400", "-1E999", "1" + "0" * 400, "-0", "1e-400",
    '"\\ud83d"', '"x\\udc00y"', '"\\ude00\\ud83d"', '"\\ud83d\\ude00"', '"\\u0000"', '"\\uDBFF"',
    "[" * 65 + "]" * 65, "[" * 64 + "]" * 64, '{"a":' * 65 + "1" + "}" * 65, "[" * 5000 + "]" * 5000,
))
# Broken on purpose: never valid JSON.
BROKEN = tuple(Raw(text) for text in ("nan", "inf", "'x'", '"\\x41"', "[1,]", '"unterminated', "{", "]", "01", "+1"))


def dumps(value: Any) -> str:
    """json.dumps, except Raw values are written as they are."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(dumps(v) for v in value) + "]"
    return json.dumps(value)


def mostly(usual: st.SearchStrategy, odd: st.SearchStrategy, one_in: int = 8) -> st.SearchStrategy:
    """`usual`, and `odd` one time in `one_in`."""
    return st.integers(0, one_in - 1).flatmap(lambda i: odd if i == 0 else usual)


@st.composite
def spliced(draw, document: Any) -> str:
    """`document` as text, one time in three with one of its values (at any depth) replaced by a nasty one."""
    paths: list[tuple] = []

    def walk(value, path):
        paths.append(path)
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, path + (key,))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(item, path + (index,))

    walk(document, ())
    if len(paths) < 2 or draw(st.integers(0, 2)):
        return dumps(document)
    target = draw(st.sampled_from(paths[1:]))
    replacement = draw(st.sampled_from(NASTY + BROKEN))

    def rebuild(value, path):
        if path == target:
            return replacement
        if isinstance(value, dict):
            return {k: rebuild(v, path + (k,)) for k, v in value.items()}
        if isinstance(value, list):
            return [rebuild(v, path + (i,)) for i, v in enumerate(value)]
        return value

    return dumps(rebuild(document, ()))
