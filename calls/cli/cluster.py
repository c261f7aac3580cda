"""A local cluster of the distributed mode: gateway processes behind the balancer, Celery workers and one beat, as one object.

`manage.py voicecall cluster` runs one for an operator; the tests with real processes start theirs
with the same class (tests/cluster.py). Every process is a real child in a process group of its
own, so a stop (or a kill, which is SIGKILL, as when a machine dies) reaches the children it made
too (a Celery worker's pool), and nothing outlives the cluster.

Imports no Django at module level: a test process uses it without touching its own settings.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import httpx

from calls.free_ports import free_port
from calls.metrics import multiproc
from voicecall_project.secret_files import secret_file

ROOT = Path(__file__).resolve().parent.parent.parent
RPC_PATH = "/voice/rpc"
# The parent's settings that must not leak into the cluster's processes: each is set for them (or, for
# the test-only ones, means something else there: inline jobs, no services started, CLI delegation off).
NOT_INHERITED = ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DJANGO_SETTINGS_MODULE", "VOICECALL_DATA_DIR",
                 "VOICECALL_CONFIG", "VOICECALL_BACKGROUND", "VOICECALL_EMBEDDED_SCHEDULER",
                 "VOICECALL_AUTOSTART_SERVICES", "VOICECALL_MODE", "VOICECALL_GATEWAY_URL")
STOP_GRACE_S = 15.0


class ClusterError(Exception):
    """The cluster could not start: the message says which process and where its log is."""


def port_free(host: str, port: int) -> bool:
    """Nothing listens on host:port now (a bind succeeds, as the server's own would)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


class Process:
    """One of the cluster's processes: started in its own process group, its output appended to one log file.

    `ready` is the check `start()` waits on (None: started is enough).
    """

    def __init__(self, name: str, command: list[str], *, env: dict[str, str], log_path: Path,
                 port: int | None = None, ready: Callable[["Process"], bool] | None = None,
                 what: str = "") -> None:
        self.name = name
        self.command = command
        self.env = dict(env)  # its own: a test may change one process's environment before a restart
        self.log_path = log_path
        self.port = port
        self.what = what or name
        self._ready = ready
        self.process: subprocess.Popen | None = None
        self.starts = 0
        self.spawned_at = 0.0  # wall-clock time of the last start (file times are compared with it)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def spawn(self) -> "Process":
        """Start the process and return at once (`wait_ready` waits for it)."""
        if self.alive():
            raise ClusterError(f"{self.name} is already running (pid {self.pid})")
        self.starts += 1
        self.spawned_at = time.time()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a") as log:
            log.write(f"\n--- start {self.starts}: {' '.join(self.command)} ---\n")
            log.flush()
            self.process = subprocess.Popen(self.command, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def wait_ready(self, deadline: float) -> "Process":
        """Return once the ready check holds; a process that exits, or a deadline passed, is a ClusterError."""
        while True:
            if not self.alive():
                raise ClusterError(f"{self.name} exited while starting (code {self.process.returncode}); "
                                   f"see {self.log_path}:\n{self.log()[-3000:]}")
            if self._ready is None or self._ready(self):
                return self
            if time.monotonic() >= deadline:
                raise ClusterError(f"{self.name} was not ready in time ({self.what}); see {self.log_path}:\n"
                                   f"{self.log()[-3000:]}")
            time.sleep(0.1)

    def start(self, timeout: float = 90.0) -> "Process":
        """Start (again, after a kill: same port, same name) and wait until ready."""
        return self.spawn().wait_ready(time.monotonic() + timeout)

    def signal_group(self, signum: int) -> None:
        """Send `signum` to the process and every process it started (its process group)."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def kill(self) -> None:
        """SIGKILL to the whole group: no shutdown code runs, as when the machine or the OOM killer takes it."""
        if self.process is None:
            return
        self.signal_group(signal.SIGKILL)
        self.process.wait(10)
        if metrics_dir := multiproc.directory(self.env):
            multiproc.process_exited(self.process.pid, Path(metrics_dir))

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        """SIGTERM (a clean stop), SIGKILL after `grace`; then anything left in its group is killed too."""
        if self.process is None:
            return
        if self.alive():
            self.signal_group(signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def __repr__(self) -> str:
        return f"<{self.name} pid={self.pid} port={self.port}>"


def _written_since(paths, moment: float) -> bool:
    for path in paths:
        try:
            if path.stat().st_mtime >= moment - 0.1:  # file times come from a coarser clock
                return True
        except FileNotFoundError:
            continue
    return False


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


class Cluster:
    """Gateways behind the balancer, Celery workers and a beat on one PostgreSQL and one Redis; a context manager.

    The processes share `data_dir` as their VOICECALL_DATA_DIR and one SECRET_KEY (`secret_key`, else
    the one kept in data_dir/secret_key, which the settings use when none is set); each accepts the
    data directory's local RPC token, so the CLI on this machine works through the balancer.
    `config` is written to data_dir/cluster/voicecall.json, with serve.port set to the balancer's port
    and publicUrl defaulting to the balancer's address; with no `config`, `config_path` (the operator's
    file, used as it is) or none at all. Logs and beat's schedule are in data_dir/cluster/.
    Node ports: `node_ports`, else consecutive after `port` when that is given, else free ports.
    `worker_args` are added to each worker's command line (default: none, so the settings' pool: 32 threads); `prefix` puts a
    command before a process's own, by name ({"node-0": ["taskset", "-c", "0"]}).
    """

    def __init__(self, data_dir: Path, *, database_url: str, redis_url: str, config: dict | None = None,
                 nodes: int = 2, workers: int = 1, beat: bool = True, port: int | None = None,
                 secret_key: str | None = None, env: dict[str, str] | None = None, server: str = "daphne",
                 config_path: Path | None = None, bind: str = "127.0.0.1", node_ports: list[int] | None = None,
                 worker_args: list[str] | None = None, rpc_token: str | None = None,
                 prefix: dict[str, list[str]] | None = None) -> None:
        if nodes < 1:
            raise ValueError(f"nodes: a cluster needs at least one gateway process, got {nodes}")
        if workers < 0:
            raise ValueError(f"workers: must be 0 or more, got {workers}")
        if node_ports is not None and len(node_ports) != nodes:
            raise ValueError(f"node_ports: {len(node_ports)} ports for {nodes} nodes")
        self.data_dir = Path(data_dir)
        self.dir = self.data_dir / "cluster"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.database_url = database_url
        self.redis_url = redis_url
        self.bind = bind
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        if node_ports is None:
            node_ports = [self.port + 1 + i for i in range(nodes)] if port else [free_port() for _ in range(nodes)]
        self.server = server
        self.secret_key = secret_key or secret_file(self.data_dir / "secret_key", 50)
        self.name = "cluster-" + secrets.token_hex(4)  # Celery node names: unique on a shared broker
        self.worker_args = worker_args if worker_args is not None else []
        self.prefix = prefix or {}
        if config is not None:
            self.config_path: Path | None = self.dir / "voicecall.json"
            self.config_path.write_text(json.dumps(self._cluster_config(config), indent=2))
        else:
            self.config_path = Path(config_path) if config_path else None
        extra = dict(env or {})
        # Every process accepts the data directory's local RPC token (the file the CLI on this machine
        # sends from an embedded-mode shell), whatever else VOICECALL_RPC_TOKENS lists; it is the
        # token `rpc()` sends unless `rpc_token` names another.
        local = secret_file(self.data_dir / "rpc_token", 32)
        self.rpc_token = rpc_token or local
        configured = extra.get("VOICECALL_RPC_TOKENS", os.environ.get("VOICECALL_RPC_TOKENS", ""))
        accepted = [token for token in dict.fromkeys([local, *([rpc_token] if rpc_token else [])])
                    if token not in configured]
        tokens = ",".join([*(f"write:{token}" for token in accepted), *([configured] if configured.strip() else [])])
        self.env = {key: value for key, value in os.environ.items()
                    if key not in NOT_INHERITED and not key.startswith("PYTEST_")}
        self.env.update(
            DJANGO_SETTINGS_MODULE="voicecall_project.settings", DATABASE_URL=database_url, REDIS_URL=redis_url,
            SECRET_KEY=self.secret_key, VOICECALL_DATA_DIR=str(self.data_dir),
            VOICECALL_CONFIG=str(self.config_path or ""), PYTHONUNBUFFERED="1",
        )
        self.env.setdefault("VOICECALL_LOG_LEVEL", "INFO")
        # prometheus_client's multiprocess mode: every gateway and worker writes its counters here, and
        # a scrape of any gateway (through the balancer) sums the whole cluster's (docs/console.md, Metrics).
        self.env[multiproc.ENV] = str(self.dir / "metrics")
        self.env.update(extra)
        self.metrics_dir = Path(self.env[multiproc.ENV])
        self.env["VOICECALL_RPC_TOKENS"] = tokens
        self.nodes = [self._node(i, node_port) for i, node_port in enumerate(node_ports)]
        backends = [arg for node in self.nodes for arg in ("--backend", f"127.0.0.1:{node.port}")]
        self.balancer = Process(
            "balancer", [*self.prefix.get("balancer", []), sys.executable, "-m", "calls.balancer",
                         "--listen", f"{bind}:{self.port}", *backends],
            env=self.env, log_path=self.dir / "balancer.log", port=self.port,
            ready=lambda p: "listening on " in p.log(), what=f"listening on port {self.port}")
        self.workers = [self._worker(i) for i in range(workers)]
        self.beat = self._beat() if beat else None
        self._probe = None
        self.started = False

    # --- the processes ---------------------------------------------------------------------

    def _cluster_config(self, config: dict) -> dict:
        """`config` with serve.port the balancer's, and publicUrl the balancer's address unless it says otherwise."""
        config = json.loads(json.dumps(config))  # a copy
        block = config
        if "plugins" in config:  # the wrapped form: plugins.entries.voice-call.config
            block = config["plugins"]["entries"]["voice-call"].setdefault("config", {})
        block.setdefault("publicUrl", self.base)
        block["serve"] = {**block.get("serve", {}), "port": self.port}
        return config

    def _node(self, index: int, port: int) -> Process:
        return Process(
            f"node-{index}", [*self.prefix.get(f"node-{index}", []), sys.executable, "manage.py", "gateway",
                              "--bind", "127.0.0.1", "--port", str(port), "--server", self.server],
            env=self.env, log_path=self.dir / f"node-{index}.log", port=port,
            ready=lambda p: _http_ok(f"{p.base}/healthz"), what=f"/healthz on port {port}")

    def _worker(self, index: int) -> Process:
        hostname = f"worker{index}@{self.name}"
        process = Process(
            f"worker-{index}", [*self.prefix.get(f"worker-{index}", []), sys.executable, "-m", "celery",
                                "-A", "voicecall_project", "worker", "-n", hostname, "-l", "info", *self.worker_args],
            env=self.env, log_path=self.dir / f"worker-{index}.log",
            ready=lambda p: self._pings(hostname), what=f"celery ping to {hostname}")
        process.hostname = hostname
        return process

    def _beat(self) -> Process:
        schedule = self.dir / "celerybeat-schedule"
        return Process(
            "beat", [*self.prefix.get("beat", []), sys.executable, "-m", "celery", "-A", "voicecall_project", "beat",
                     "-l", "info", "--schedule", str(schedule), "--pidfile", ""],
            env=self.env, log_path=self.dir / "beat.log",
            # Beat writes its schedule file once it has loaded the app and is about to tick.
            ready=lambda p: _written_since(self.dir.glob("celerybeat-schedule*"), p.spawned_at),
            what=f"its schedule file {schedule}")

    def _pings(self, hostname: str) -> bool:
        """The worker answers a control ping on the broker: it is consuming its queues."""
        if self._probe is None:
            from celery import Celery

            self._probe = Celery(f"{self.name}-probe", broker=self.redis_url, set_as_current=False)
        try:
            return bool(self._probe.control.ping(destination=[hostname], timeout=0.5))
        except Exception:  # the broker not reachable yet is the same as no answer
            return False

    def processes(self) -> list[Process]:
        return [self.balancer, *self.nodes, *self.workers, *([self.beat] if self.beat else [])]

    # --- lifecycle -------------------------------------------------------------------------

    def migrate(self) -> None:
        done = subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise ClusterError(f"migrate failed (code {done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")

    def start(self, timeout: float = 90.0) -> "Cluster":
        """Migrate, start every process, and return once each gateway's /healthz answers, the balancer
        accepts and every worker answers a ping. Anything that fails stops the whole cluster first."""
        deadline = time.monotonic() + timeout
        self.started = True
        taken = [f"{p.name} {host}:{p.port}" for p, host in [(self.balancer, self.bind), *((n, "127.0.0.1") for n in self.nodes)]
                 if not port_free(host, p.port)]
        if taken:
            raise ClusterError(f"port in use, for {', '.join(taken)}: stop what listens there, or choose another "
                               "serve.port (the gateways take the ports after it)")
        try:
            multiproc.fresh(self.metrics_dir)  # an earlier run's counters would be summed in too
            self.migrate()
            for process in self.processes():
                process.spawn()
            # The balancer last: it says it listens at once, and the others take seconds to load Django.
            for process in [*self.processes()[1:], self.balancer]:
                process.wait_ready(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def add_worker(self, timeout: float = 60.0) -> Process:
        worker = self._worker(len(self.workers))
        self.workers.append(worker)
        return worker.start(timeout)

    def exited(self) -> list[Process]:
        """Processes that were started and are no longer running (killed, or died)."""
        return [p for p in self.processes() if p.process is not None and not p.alive()]

    def stop(self) -> None:
        """Stop everything: SIGTERM to every group at once, then SIGKILL to whatever is left."""
        running = [p for p in self.processes() if p.alive()]
        for process in running:
            process.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for process in self.processes():
            if process.process is None:
                continue
            try:
                process.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            process.kill()  # leftovers in its group (a pool child), and a process that ignored SIGTERM
        if self._probe is not None:
            self._probe.close()
            self._probe = None

    def __enter__(self) -> "Cluster":
        return self if self.started else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- talking to it ---------------------------------------------------------------------

    def rpc(self, method: str, params: dict[str, Any] | None = None, node: int | None = None, *,
            timeout: float = 30.0, token: str | None = None) -> dict:
        """One JSON-RPC request with the write token, through the balancer (or to node `node` directly);
        returns the whole response ({"result": …} or {"error": …})."""
        base = self.base if node is None else self.nodes[node].base
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}}
        response = httpx.post(base + RPC_PATH, json=body, timeout=timeout,
                              headers={"Authorization": f"Bearer {token or self.rpc_token}"})
        return response.json()

    def rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        """A read query on the cluster's database (`%s` placeholders)."""
        import psycopg

        with psycopg.connect(self.database_url, connect_timeout=5) as db:
            return db.execute(sql, params).fetchall()



# --- `manage.py voicecall cluster`: the services it needs, and running until Ctrl-C --------------

def ensure_postgres(database_url: str) -> str:
    """Check that `database_url` is a PostgreSQL database that answers; create the database when only it is missing.

    Returns a line saying what was done; raises ClusterError saying what is missing otherwise.
    """
    from urllib.parse import urlsplit, urlunsplit

    import psycopg

    parts = urlsplit(database_url)
    if parts.scheme not in ("postgres", "postgresql", "pgsql", "postgis"):
        raise ClusterError(f"DATABASE_URL must point at PostgreSQL (postgresql://…) for a cluster, got a {parts.scheme or 'plain'} "
                           "URL: several processes on the same data need a database server")
    name = parts.path.lstrip("/")
    where = f"{parts.hostname or 'localhost'}:{parts.port or 5432}"
    if not name:
        raise ClusterError(f"DATABASE_URL names no database (postgresql://…@{where}/NAME)")
    try:
        psycopg.connect(database_url, connect_timeout=5).close()
        return f"database {name} on {where}"
    except psycopg.OperationalError as exc:
        if f'database "{name}" does not exist' not in str(exc):
            raise ClusterError(f"PostgreSQL at {where} does not answer for DATABASE_URL ({_first_line(exc)}): "
                               "start it, or point DATABASE_URL at one that runs") from None
    server = urlunsplit(parts._replace(path="/postgres"))
    try:
        with psycopg.connect(server, connect_timeout=5, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        raise ClusterError(f"the database {name} does not exist on {where}, and creating it failed ({_first_line(exc)}): "
                           f"create it (createdb {name}) or name another in DATABASE_URL") from None
    return f"database {name} on {where} (created)"


def ensure_redis(redis_url: str) -> str:
    """Check that Redis answers PING at `redis_url`; ClusterError saying so otherwise."""
    from urllib.parse import urlsplit

    import redis

    parts = urlsplit(redis_url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ClusterError(f"REDIS_URL must be a redis://… URL, got {parts.scheme or 'no scheme'}")
    where = f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=3, socket_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise ClusterError(f"Redis at {where} does not answer for REDIS_URL ({_first_line(exc)}): "
                           "start it, or point REDIS_URL at one that runs") from None
    finally:
        client.close()
    return f"Redis on {where}"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def describe(cluster: Cluster) -> list[str]:
    """One line per process: what it is, where it listens, its pid and its log file."""
    lines = []
    for process in cluster.processes():
        where = {"balancer": f"http://{cluster.bind}:{cluster.port}"}.get(process.name) or (
            process.base if process.port else getattr(process, "hostname", "") or "-")
        lines.append(f"  {process.name:<10} {where:<32} pid {process.pid:<8} log {process.log_path}")
    return lines


def run_until_stopped(cluster: Cluster, write: Callable[[str], None], *, poll: float = 0.5,
                      stop_requested: Callable[[], bool] = lambda: False) -> None:
    """Watch the cluster until Ctrl-C (KeyboardInterrupt) or `stop_requested()`; a child that exits is reported once."""
    reported: set[tuple[str, int]] = set()
    while not stop_requested():
        for process in cluster.exited():
            key = (process.name, process.pid)
            if key not in reported:
                reported.add(key)
                write(f"{process.name} (pid {process.pid}) exited with code {process.process.returncode}; "
                      f"the rest keep running. Its log: {process.log_path}")
        if not any(process.alive() for process in cluster.processes()):
            write("every process has exited")
            return
        time.sleep(poll)
