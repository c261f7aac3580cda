"""Deep merge for config objects: objects merge recursively, None is skipped, arrays are replaced."""
from __future__ import annotations

from typing import Any

# Keys that would be prototype pollution in the reference; never merged here either.
BLOCKED_KEYS = frozenset({"__proto__", "prototype", "constructor"})


def deep_merge(base: Any, override: Any) -> Any:
    """Return `override` merged over `base` without changing either."""
    if override is None:
        return base
    if not isinstance(override, dict):
        return override
    merged = {k: v for k, v in (base if isinstance(base, dict) else {}).items() if k not in BLOCKED_KEYS}
    for key, value in override.items():
        if key in BLOCKED_KEYS or value is None:
            continue
        merged[key] = deep_merge(merged.get(key), value)
    return merged
