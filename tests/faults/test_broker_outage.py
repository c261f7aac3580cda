"""A Celery worker that loses Redis with a job in flight reconnects and takes jobs again (voicecall_project/broker.py).

kombu's own Redis transport makes such a worker exit with "Unrecoverable error" (prefork or threads
pool with a free slot, so it is still reading the queue; late acknowledgement): the requeue of the
unacknowledged job goes through the connection the worker already tore down. A real worker process
on a private redis-server that is restarted under it.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.paths import ROOT
from tests.private_redis import PrivateRedis
from tests.waiting import wait_until


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_a_worker_with_a_job_in_flight_survives_a_redis_restart(tmp_path, pool):
    with PrivateRedis(tmp_path) as redis:
        from celery import Celery

        app = Celery("slow-sender", broker=redis.url, set_as_current=False)
        app.conf.broker_transport = "voicecall_project.broker:Transport"
        log_path = tmp_path / "worker.log"
        env = {**os.environ, "BROKER": redis.url, "PYTHONUNBUFFERED": "1"}
        env.pop("DJANGO_SETTINGS_MODULE", None)
        with open(log_path, "w") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "tests.faults.celery_slow_app", "worker", "--pool", pool,
                 "--concurrency", "2", "-l", "info"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            def log_text() -> str:
                return log_path.read_text(errors="replace")

            def files(name: str) -> tuple[str, str, str]:
                return tuple(str(tmp_path / f"{name}.{part}") for part in ("started", "release", "done"))

            wait_until(lambda: " ready." in log_text(), "the worker to be ready", timeout=60, interval=0.1)
            first = files("first")
            app.send_task("hold", args=first)
            wait_until(lambda: os.path.exists(first[0]), "the first job to start", timeout=30, interval=0.05)

            redis.restart()  # the worker's connection breaks with the job unacknowledged
            open(first[1], "w").close()
            wait_until(lambda: os.path.exists(first[2]), "the first job to finish", timeout=30, interval=0.05)

            second = files("second")
            open(second[1], "w").close()

            def taken() -> bool:
                assert worker.poll() is None, f"the worker exited:\n{log_text()[-4000:]}"
                if not os.path.exists(second[0]):
                    app.send_task("hold", args=second)  # published again until the reconnected worker takes one
                return os.path.exists(second[2])

            wait_until(taken, "the worker to take a job after Redis came back", timeout=60, interval=1.0)
            assert "Unrecoverable error" not in log_text()
        finally:
            worker.terminate()
            try:
                worker.wait(15)
            except subprocess.TimeoutExpired:
                worker.kill()
            app.close()
