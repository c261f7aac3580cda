"""One redactor for every text that leaves the process: credential shapes and the configured secrets masked."""
from __future__ import annotations

import logging
import re
import threading
from urllib.parse import quote

MASK = "[redacted]"
# Shorter values would mask ordinary words; no real credential is this short.
MIN_SECRET_LENGTH = 6
# Bounded: the config holds a handful of secrets, but a process reloading it for hours must not grow.
# Past the cap the oldest go first: the secrets in use now are the last remembered.
MAX_SECRETS = 1024

_SCHEMES = r"(?:bearer|basic|token|digest|negotiate|apikey)"
_HEADER_NAMES = (
    r"(?:proxy-)?authorization|xi-api-key|x-goog-api-key|x-api-key|api-key|x-auth-token"
    r"|ocp-apim-subscription-key"
)
_PARAM_NAMES = (
    r"api[_-]?key|apikey|key|access[_-]?token|refresh[_-]?token|id[_-]?token|auth[_-]?token|token"
    r"|password|passwd|secret|client[_-]?secret"
)
# A JSON (or Python repr) field whose name ends in one of these words holds a secret:
# "api_key", "apiKey", "authToken", "client_secret", "webhookSecret" -- but not "max_tokens".
_FIELD_WORDS = (
    r"api[_-]?key|apikey|secret|secret[_-]?key|password|passwd|token|authorization|credentials?"
    r"|private[_-]?key"
)

_FIELD_HINTS = ("key", "secret", "passw", "token", "authorization", "credential")


def _has(*words: str):
    return lambda text, lower: any(word in lower for word in words)


# (cheap test, pattern, replacement); applied in this order, each precompiled once. The test is a
# few substring checks on the text and its lowercase form: most log lines hold none of the words
# a pattern needs, and skip its regular expression altogether.
_PATTERNS: tuple[tuple[object, re.Pattern[str], str], ...] = (
    # Header lines and header dicts: keep the name and the auth scheme, mask the credential.
    (_has("authorization", "api-key", "auth-token", "subscription-key"), re.compile(
        rf"(?i)(\b(?:{_HEADER_NAMES})[\"']?\s*[:=]\s*[\"']?(?:{_SCHEMES}\s+)?)"
        rf"(?!{_SCHEMES}\b)[^\s\"',;<>]+"), rf"\1{MASK}"),
    # A short lowercase word is prose ("bearer token: send ..."), not a credential.
    (_has("bearer"),
     re.compile(r"(?i)(\bbearer\s+)(?!(?-i:[a-z]{1,11})(?![A-Za-z0-9\-._~+/=]))[A-Za-z0-9\-._~+/]+=*"), rf"\1{MASK}"),
    # Base64 only (mixed case, a digit or a symbol), so "basic configuration" stays readable.
    (_has("basic"),
     re.compile(r"(?i)(\bbasic\s+)(?=[A-Za-z0-9+/]*(?:[0-9+/=]|(?-i:[a-z][A-Z])))[A-Za-z0-9+/]{6,}=*"), rf"\1{MASK}"),
    # URL passwords: scheme://user:password@host keeps the user.
    (lambda text, lower: "://" in text and "@" in text,
     re.compile(r"(?i)(\b[a-z][a-z0-9+.\-]*://[^\s/@:]*:)[^\s/@]+@"), rf"\1{MASK}@"),
    # Query and form parameters, in URLs and in text (every name ends in one of these words).
    (_has("key=", "token=", "password=", "passwd=", "secret="),
     re.compile(rf"(?i)((?<![\w\-])(?:{_PARAM_NAMES})=)[^&\s\"'#<>,;]+"), rf"\1{MASK}"),
    # JSON / repr fields named like secrets: a quoted value, or a bare one (number, word).
    (lambda text, lower: ('"' in text or "'" in text) and any(hint in lower for hint in _FIELD_HINTS),
     re.compile(rf"(?i)([\"'][\w\-]*?(?:{_FIELD_WORDS})[\"']\s*:\s*\")(?:[^\"\\]|\\.)*\""), rf'\1{MASK}"'),
    (lambda text, lower: "'" in text and any(hint in lower for hint in _FIELD_HINTS),
     re.compile(rf"(?i)([\"'][\w\-]*?(?:{_FIELD_WORDS})[\"']\s*:\s*')(?:[^'\\]|\\.)*'"), rf"\1{MASK}'"),
    (lambda text, lower: ('"' in text or "'" in text) and any(hint in lower for hint in _FIELD_HINTS),
     re.compile(rf"(?i)([\"'][\w\-]*?(?:{_FIELD_WORDS})[\"']\s*:\s*)(?!null\b|\"|')[^\s,}}\]\"']+"), rf"\1{MASK}"),
    # Well-known key shapes wherever they appear.
    (lambda text, lower: "sk-" in text, re.compile(r"(?<![\w\-])sk-[A-Za-z0-9_\-]{10,}"), MASK),
    (lambda text, lower: "AIza" in text, re.compile(r"(?<![\w\-])AIza[0-9A-Za-z_\-]{20,}"), MASK),
)

_lock = threading.Lock()
_secrets: dict[str, None] = {}  # insertion-ordered set
# The remembered secrets as one alternation, with the values themselves for a quick substring test
# first; replaced as a whole (one assignment, so readers never lock) when the set changes.
_remembered: tuple[re.Pattern[str], tuple[str, ...]] | None = None


def remember_secret(value: str | None) -> None:
    """Mask this value wherever it appears from now on (and its URL-encoded form); short values are ignored."""
    global _remembered
    if not isinstance(value, str):
        return
    # A piece of the mask itself could never be masked away.
    forms = {form for form in (value, value.strip(), quote(value.strip(), safe=""))
             if len(form) >= MIN_SECRET_LENGTH and form not in MASK + MASK}
    if not forms:
        return
    with _lock:
        if forms <= _secrets.keys():
            return
        for form in forms:
            _secrets.pop(form, None)
            _secrets[form] = None
        while len(_secrets) > MAX_SECRETS:
            del _secrets[next(iter(_secrets))]
        # Longest first, so a secret that contains another is masked whole.
        ordered = tuple(sorted(_secrets, key=len, reverse=True))
        _remembered = (re.compile("|".join(re.escape(secret) for secret in ordered)), ordered)


def forget_secrets() -> None:
    """Drop every remembered secret (tests)."""
    global _remembered
    with _lock:
        _secrets.clear()
        _remembered = None


def redact(text: str) -> str:
    """The text with every credential shape and every remembered secret replaced by [redacted]."""
    if not text:
        return text
    if not isinstance(text, str):
        text = str(text)
    remembered = _remembered
    if remembered is not None:
        text = _mask_secrets(remembered, text)
    lower = text.lower()
    for applies, shape, replacement in _PATTERNS:
        if applies(text, lower):
            text = shape.sub(replacement, text)
            lower = text.lower()
    if remembered is not None:
        text = _mask_secrets(remembered, text)
    return text


def _mask_secrets(remembered: tuple[re.Pattern[str], tuple[str, ...]], text: str) -> str:
    pattern, values = remembered
    if not any(value in text for value in values):  # the usual case, far cheaper than the regex
        return text
    # A secret may begin inside the mask just written ("ted]ab" in "[redacted]ab"): mask again.
    # Bounded, as a secret made of pieces of the mask could otherwise match forever.
    for _ in range(8):
        masked = pattern.sub(MASK, text)
        if masked == text:
            break
        text = masked
    return text


class RedactedError(Exception):
    """An exception whose message is redacted when it is built: upstream error bodies echo what they were sent."""

    def __init__(self, *args: object) -> None:
        super().__init__(*(redact(arg) if isinstance(arg, str) else arg for arg in args))


class RedactFilter(logging.Filter):
    """On a handler: the record's message and traceback are redacted before any formatter sees them.

    The message is formatted once here and stored without args; the traceback is formatted, redacted
    and stored as exc_text, which formatters use instead of formatting exc_info again.
    """

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: written as it is, since the handler's own report would not be redacted
            message = f"{record.msg} (arguments that do not fit it: {record.args!r})"
        record.msg, record.args = redact(message), None
        if record.exc_info and not getattr(record, "_redacted_exc", False):
            text = record.exc_text or self._formatter.formatException(record.exc_info)
            record.exc_text = redact(text)
            record._redacted_exc = True
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True
