"""prometheus_client's multiprocess mode: the directory every gateway and worker process writes its values to.

With PROMETHEUS_MULTIPROC_DIR set (before prometheus_client is imported), each process keeps its
counters and histograms in files there, named by its pid, and a scrape of any of them sums every
file. Whoever starts the processes gives them one fresh directory (`fresh`: emptied, as files of an
earlier run would be summed too) and, when one exits, `process_exited`. Imports no Django and no
prometheus_client at module level: the cluster's parent process uses it.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"


def directory(environ: Mapping[str, str] = os.environ) -> str | None:
    """The multiprocess directory in force (None: each process shows only its own values)."""
    return environ.get(ENV) or None


def prepare(environ: Mapping[str, str] = os.environ) -> None:
    """Make the directory if it is named and missing: prometheus_client fails at its first metric otherwise."""
    path = directory(environ)
    if path:
        os.makedirs(path, exist_ok=True)


def fresh(path: Path) -> Path:
    """The directory at `path` without the values of an earlier run (prometheus_client's *.db files), for a new set of processes."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for old in path.glob("*.db"):
        old.unlink(missing_ok=True)
    return path


def process_exited(pid: int, path: Path) -> None:
    """A process writing to `path` has exited: prometheus_client drops its live gauges' files.

    Its counters and histograms stay (they are totals of the whole run); the gateway records no
    per-process gauges today, so this keeps the directory right should one be added.
    """
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, str(path))
