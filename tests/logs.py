"""Log records a test's own code wrote, for assertions that count them.

A live gateway that another test of the same process left serving may log meanwhile (Daphne
warns when it kills a slow-closing connection), so a test counts only the loggers it is about.
"""
from __future__ import annotations


def records_of(caplog, logger: str, level: int = 0) -> list:
    """The captured records at `level` or above from `logger` and its children."""
    return [r for r in caplog.records
            if r.levelno >= level and (r.name == logger or r.name.startswith(logger + "."))]


class ConsoleCapture:
    """Lines as the console handler writes them (the real filter and formatter) while in use.

    `lines` are the written text; with json=True, `records` are them parsed. Attached to the root
    logger like the real handler; the "calls" and "providers" loggers are opened to `level`.
    """

    def __init__(self, *, json: bool = True, level: int = 20) -> None:
        import io
        import logging

        from core.log_format import JsonFormatter, TextFormatter
        from core.redact import RedactFilter

        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(JsonFormatter() if json else TextFormatter())
        self.handler.addFilter(RedactFilter())
        self.json = json
        self.level = level
        self._levels: dict[str, int] = {}

    def __enter__(self) -> "ConsoleCapture":
        import logging

        for name in ("calls", "providers"):
            self._levels[name] = logging.getLogger(name).level
            logging.getLogger(name).setLevel(self.level)
        logging.getLogger().addHandler(self.handler)
        return self

    def __exit__(self, *exc) -> None:
        import logging

        logging.getLogger().removeHandler(self.handler)
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    @property
    def records(self) -> list[dict]:
        import json

        return [json.loads(line) for line in self.text.splitlines() if line.strip()]


class RealConsole:
    """What the settings' console handler writes while in use: its stream is swapped for a buffer.

    The real handler, filter and formatter, so `text` is exactly what an operator would read.
    """

    def __enter__(self) -> "RealConsole":
        import io
        import logging

        from core.redact import RedactFilter

        consoles = [handler for handler in logging.getLogger().handlers
                    if isinstance(handler, logging.StreamHandler)
                    and any(isinstance(f, RedactFilter) for f in handler.filters)]
        assert len(consoles) == 1, f"expected the one console handler of the settings, found {consoles}"
        self.handler = consoles[0]
        self.buffer = io.StringIO()
        self._previous = self.handler.setStream(self.buffer)
        return self

    def __exit__(self, *exc) -> None:
        self.handler.setStream(self._previous)

    @property
    def text(self) -> str:
        return self.buffer.getvalue()
