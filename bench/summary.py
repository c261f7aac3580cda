"""`make bench`: every benchmark at small levels, one after the other, then one table against the targets.

Each benchmark runs as its own command with `--summary FILE`, where it writes its headline
figures; this script only runs them and prints the table. A few minutes in all; the full levels
are each benchmark's own command (bench/README.md). Run: `.venv/bin/python bench/summary.py`.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import read_summary  # noqa: E402

RUNS = [
    ("media path, cloud fakes", ["media_streams.py", "--engine", "cloud", "--levels", "10,50", "--server", "daphne,uvicorn"]),
    ("media path, offline", ["media_streams.py", "--engine", "local", "--levels", "4"]),
    ("realtime bridge, instant fake", ["realtime_bridge.py", "--levels", "1,10", "--server", "daphne,uvicorn"]),
    ("webhooks", ["webhook_events.py", "--calls", "60"]),
    ("cluster, one node and two", ["cluster.py", "--calls", "30", "--levels", "5"]),
    ("codecs", ["codecs.py", "--frames", "1000", "--repeat", "2"]),
    ("local recording", ["recording.py", "--seconds", "60", "--repeat", "2"]),
    ("CLI start-up", ["cli_startup.py", "--runs", "3"]),
    ("memory", ["memory.py", "--calls", "120", "--concurrency", "8"]),
    ("soak", ["soak.py", "--calls", "50", "--every", "20"]),
    ("signatures", ["signatures.py", "--rounds", "3000"]),
]


def main() -> int:
    rows: list[dict] = []
    failures: list[str] = []
    started = time.monotonic()
    for title, command in RUNS:
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as out:
            path = Path(out.name)
        print(f"== {title}: {' '.join(command)}", flush=True)
        result = subprocess.run([sys.executable, str(ROOT / "bench" / command[0]), *command[1:], "--summary", str(path)],
                                cwd=ROOT, stdout=subprocess.DEVNULL, env={**os.environ})
        if result.returncode != 0:
            failures.append(f"{title} (exit {result.returncode})")
        rows.extend({"bench": title, **row} for row in read_summary(path))
        path.unlink(missing_ok=True)
    print(f"\n{len(RUNS)} benchmarks in {time.monotonic() - started:.0f} s; load average now "
          f"{Path('/proc/loadavg').read_text().split()[0]}\n")
    print("| benchmark | measure | value | target | met |")
    print("|---|---|---:|---|---|")
    for row in rows:
        met = "" if row.get("met") is None else ("yes" if row["met"] else "**no**")
        print(f"| {row['bench']} | {row['measure']} | {row['value']} | {row.get('target') or ''} | {met} |")
    for failure in failures:
        print(f"\nfailed to run: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
