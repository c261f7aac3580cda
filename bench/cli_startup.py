"""Benchmark: wall time of `manage.py voicecall` commands, each a fresh process, against the 0.7 s target.

Measures `voicecall status` on an empty database, `voicecall call --help`, `voicecall call`
(placed standalone on the mock carrier: no gateway is asked) and `voicecall status` with the
calls it placed live, on SQLite in a temporary folder. Prints the median, the fastest and the
slowest wall time of N runs of each and the median CPU time, with the load average before and
after (the target is for an idle machine).
Run: `.venv/bin/python bench/cli_startup.py [--runs 10]`.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_S = 0.7
sys.path.insert(0, str(ROOT))

from bench.report import figure, write_summary  # noqa: E402


def environment(data_dir: str) -> dict[str, str]:
    # Embedded mode (SQLite in the data directory), whatever this shell points at.
    env = {key: value for key, value in os.environ.items() if key not in ("DATABASE_URL", "REDIS_URL")}
    config = Path(data_dir) / "config.json"
    # Room for every call the benchmark places; the mock carrier never answers, so they stay live.
    config.write_text(json.dumps({"provider": "mock", "maxConcurrentCalls": 1000}))
    env.update(
        VOICECALL_DATA_DIR=data_dir,
        VOICECALL_CONFIG=str(config),
        VOICECALL_GATEWAY_URL="off",  # standalone: a gateway running elsewhere on the machine is not asked
        VOICECALL_LOG_LEVEL="WARNING",
    )
    return env


def run(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall, CPU) seconds of `python manage.py <args>`, from its start to its exit.

    The CPU time (user + system) is less disturbed by other processes than the wall time, so on
    a shared machine it tells more about what the command itself costs.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"manage.py {' '.join(args)} failed:\n{result.stderr}")
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="Runs of each command (10)")
    parser.add_argument("--summary", metavar="FILE", help="Write the headline figures for `make bench` to FILE")
    options = parser.parse_args()

    commands = [
        ("voicecall status (no calls)", ["voicecall", "status"]),
        ("voicecall call --help", ["voicecall", "call", "--help"]),
        ("voicecall call (mock carrier)", ["voicecall", "call", "--message", "Hello", "--to", "+15550001111"]),
        ("voicecall status (calls live)", ["voicecall", "status"]),
    ]
    with tempfile.TemporaryDirectory(prefix="voicecall-cli-bench-") as data_dir:
        env = environment(data_dir)
        subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True)
        run(["voicecall", "status"], env)  # a first run writes bytecode and the secret key: not measured
        before = loadavg()
        rows = []
        for name, args in commands:
            measured = [run(args, env) for _ in range(options.runs)]
            walls = sorted(wall for wall, _ in measured)
            cpu = statistics.median(cpu for _, cpu in measured)
            rows.append((name, statistics.median(walls), walls[0], walls[-1], cpu))
        after = loadavg()

    print(f"{options.runs} runs each; load average before: {before}; after: {after}")
    print()
    print(f"| command | median wall s | min s | max s | median CPU s | target {TARGET_S} s |")
    print("|---|---:|---:|---:|---:|---|")
    for name, median, fastest, slowest, cpu in rows:
        verdict = "ok" if median < TARGET_S else "over"
        print(f"| {name} | {median:.3f} | {fastest:.3f} | {slowest:.3f} | {cpu:.3f} | {verdict} |")
    write_summary(options.summary, [figure(f"{name}: median wall", median, unit="s", target=f"< {TARGET_S} s",
                                           met=median < TARGET_S) for name, median, _, _, _ in rows])


if __name__ == "__main__":
    main()
