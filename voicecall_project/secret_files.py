"""Secrets a process generates once and keeps in the data directory (owner-only files)."""
from __future__ import annotations

import os
import secrets
from pathlib import Path


def secret_file(path: Path, nbytes: int) -> str:
    """The secret stored at `path`, created with `nbytes` of randomness the first time.

    Written aside and linked into place, so processes starting together agree on one value.
    """
    if not path.exists():
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(nbytes))
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass
        finally:
            temporary.unlink()
    return path.read_text().strip()
