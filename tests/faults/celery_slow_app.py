"""A Celery app for the broker test: the project's Redis transport and late acknowledgement, and one job the test holds open.

The worker runs it with `celery -A tests.faults.celery_slow_app worker`; BROKER names the broker.
The job `hold` writes `started`, waits until the file `release` exists, then writes `done`, so the
test decides when it ends without guessing at durations.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from celery import Celery

app = Celery("slow", broker=os.environ.get("BROKER", "memory://"))
app.conf.update(
    broker_transport="voicecall_project.broker:Transport",
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    task_ignore_result=True,
)


@app.task(name="hold")
def hold(started: str, release: str, done: str) -> None:
    Path(started).touch()
    while not Path(release).exists():
        time.sleep(0.05)
    Path(done).touch()
