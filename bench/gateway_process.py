"""A benchmark's gateway process: a free port, started pinned to its core and waited for, its CPU and memory read from /proc.

On a machine with two or more cores a benchmark's gateway runs on core 0 (`taskset`) and the load
and the fakes on core 1, so what the gateway costs is measured apart from what drives it.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
GATEWAY_CORE, LOAD_CORE = 0, 1


def wait_serving(process: subprocess.Popen, port: int, *, timeout: float = 60.0, log: str = "",
                 healthz: bool = False) -> subprocess.Popen:
    """Return `process` once its port accepts connections (with `healthz`, once /healthz answers 200).

    A process that exits first, or does not serve within `timeout`, is an error naming `log`.
    """
    where = f"; see {log}" if log else ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the gateway exited while starting{where}")
        try:
            if healthz:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    return process
            else:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return process
        except (OSError, httpx.HTTPError):
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"the gateway did not start within {timeout:g} s{where}")


def pinned() -> bool:
    return (os.cpu_count() or 1) >= 2


def on_core(core: int) -> list[str]:
    return ["taskset", "-c", str(core)] if pinned() else []


def _family(pid: int) -> list[int]:
    """The gateway and its children (the PocketSphinx worker processes)."""
    pids = [pid]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                pids.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return pids


def proc_cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU seconds of the gateway process itself and of its children (the offline decoder workers)."""
    own = children = 0
    for member in _family(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks = int(fields[11]) + int(fields[12])
        if member == pid:
            own += ticks
        else:
            children += ticks
    hertz = os.sysconf("SC_CLK_TCK")
    return own / hertz, children / hertz


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """The gateway's CPU seconds: its event loop's thread, and all its other threads (jobs, database work)."""
    groups: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # Python names no OS threads: the main thread runs the event loop, the others are worker threads.
        kind = "loop" if task.name == str(pid) else "threads"
        groups[kind] = groups.get(kind, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return groups


def run_queue_seconds(pid: int) -> float:
    """Seconds the process's threads were ready to run but waited for a CPU (/proc schedstat): when this
    grows with the load, other processes on the gateway's core, not the gateway, are in its way."""
    total = 0
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


def runnable_now() -> int:
    """Threads running or ready to run on the machine this moment (/proc/stat procs_running; this process counts)."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("procs_running"):
            return int(line.split()[1])
    return 0


def wait_quiet(limit: float, *, settled: float = 1.0, busy: int = 1) -> float:
    """On a shared machine: wait, at most `limit` seconds, until no more than `busy` threads have been
    runnable for `settled` seconds (other work between its bursts). Returns the seconds waited."""
    started = quiet_since = time.monotonic()
    while time.monotonic() - started < limit:
        if runnable_now() > busy:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= settled:
            break
        time.sleep(0.1)
    return time.monotonic() - started


def proc_rss_mb(pid: int) -> float:
    total = 0.0
    for member in _family(pid):
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            continue
    return total


def start_helper(script: str, *args: str) -> tuple[subprocess.Popen, dict]:
    """A bench/ script in a process of its own on the load core (fakes of the services the gateway calls).

    It prints one JSON line (its URLs) once serving, and stops when its stdin closes (`stop_helper`).
    """
    process = subprocess.Popen([*on_core(LOAD_CORE), sys.executable, str(ROOT / "bench" / script), *args],
                               cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    if not line:
        raise RuntimeError(f"bench/{script} did not start")
    return process, json.loads(line)


def stop_helper(process: subprocess.Popen) -> None:
    process.stdin.close()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def start_gateway(data_dir: str, config: dict, server: str, profile: Path | None = None) -> subprocess.Popen:
    """`manage.py gateway --server SERVER` on the gateway core with `config`, SQLite in `data_dir`; with `profile`,
    under pyinstrument (BENCH_CPROFILE=1: cProfile) writing there. Returns once it serves."""
    path = Path(data_dir) / "voicecall.json"
    path.write_text(json.dumps(config))
    env = {**os.environ, "VOICECALL_DATA_DIR": data_dir, "VOICECALL_CONFIG": str(path),
           "DJANGO_SETTINGS_MODULE": "voicecall_project.settings", "VOICECALL_LOG_LEVEL": "WARNING"}
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    python = sys.executable
    subprocess.run([python, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True)
    command = [python, "manage.py", "gateway", "--server", server]
    if profile is not None and os.environ.get("BENCH_CPROFILE"):
        # Deterministic: every Python function's own time, also under uvloop (which pyinstrument cannot see into).
        command = [python, "-m", "cProfile", "-o", str(profile) + ".pstats", *command[1:]]
    elif profile is not None:
        # Two views: time per function wherever it is called (flat), and the call tree below 1 %.
        command = [python, "-m", "pyinstrument", "-i", "0.001", "-r", "text", "-p", "flat=true", "-p", "time=percent_of_total",
                   "-o", str(profile), *command[1:]]
    gateway = subprocess.Popen([*on_core(GATEWAY_CORE), *command], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=open(Path(data_dir) / f"gateway-{server}.log", "w"))
    return wait_serving(gateway, config["serve"]["port"], log=f"{data_dir}/gateway-{server}.log")


def stop_gateway(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGINT)  # a clean stop, so a profiler writes its report
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def stream_stats(db: Path, since: float) -> list[dict]:
    """The stats of the streams opened since `since` (epoch seconds) and closed, as the gateway stored them."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT stats FROM calls_mediastream WHERE closed_at IS NOT NULL AND opened_at >= ?",
                            (time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(since)),)).fetchall()
    return [json.loads(row[0]) for row in rows]


def worst(stats: list[dict], key: str, p: str) -> float:
    """The worst stream's percentile `p` of one of its histograms."""
    return max((s.get(key, {}).get(p, 0.0) for s in stats), default=0.0)


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])
