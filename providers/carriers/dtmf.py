"""DTMF strings in each carrier's alphabet: ours also allow p, P and ',' as pauses, carriers only w/W."""
from __future__ import annotations

_PAUSES = str.maketrans({",": "w", "p": "w", "P": "W"})


def with_w_pauses(digits: str) -> str:
    """Pauses spelled the carriers' way: ',' and 'p' are half a second (w), 'P' a second (W)."""
    return digits.translate(_PAUSES)


def twilio_digits(digits: str) -> str:
    # <Play digits> knows only the half-second pause.
    return with_w_pauses(digits).replace("W", "ww")
