"""A config error as data: the key path it is about and its message, printed as one "<path>: <message>" line."""
from __future__ import annotations

import json
import re
from collections.abc import Iterable

# A key that reads unambiguously after a dot; anything else (a phone number, a dotted id) is quoted.
PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")

Path = tuple[str | int, ...]


def dotted(path: Iterable[str | int]) -> str:
    """The path as error lines print it: keys joined by dots, list indexes in brackets."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text


def key_path(path: Iterable[str | int]) -> str:
    """The path to read or search for in the file: `numbers["+15550001234"].tts.provider`."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif PLAIN_KEY.fullmatch(str(part)):
            text += ("." if text else "") + str(part)
        else:
            text += f"[{json.dumps(str(part), ensure_ascii=False)}]"
    return text


def split_prefix(prefix: str) -> Path:
    """ "plugins.entries.voice-call.config." → its parts."""
    return tuple(part for part in prefix.split(".") if part)


class ConfigError(str):
    """One reason a config cannot be used, as the line every surface prints, with its parts.

    A str, so the error lists that the CLI, /readyz, logs and exceptions join and print keep their
    text; the setup page reads `path` (the key path's parts, empty for the file as a whole) and
    `message`.
    """

    path: Path
    message: str

    def __new__(cls, path: Iterable[str | int], message: str, *, text: str | None = None) -> ConfigError:
        path = tuple(path)
        if text is None:
            text = f"{dotted(path)}: {message}" if path else message
        error = super().__new__(cls, text)
        error.path = path
        error.message = message
        return error

    def __reduce__(self):
        return (_rebuild, (self.path, self.message, str(self)))

    @property
    def key_path(self) -> str:
        return key_path(self.path)

    def under(self, prefix: str) -> ConfigError:
        """The same error inside a wrapper ("plugins.entries.voice-call.config.")."""
        if not prefix:
            return self
        return ConfigError(split_prefix(prefix) + self.path, self.message, text=prefix + str(self))


def _rebuild(path: Path, message: str, text: str) -> ConfigError:
    return ConfigError(path, message, text=text)


def file_error(text: str) -> ConfigError:
    """An error about the file as a whole (missing, unreadable, not JSON): no key path."""
    return ConfigError((), text)
