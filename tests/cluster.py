"""A real cluster for a test: gateways behind the balancer, Celery workers and beat, on a private PostgreSQL database and a private redis-server.

    from tests.cluster import cluster_running, distributed, make_cluster  # noqa: F401 (a fixture)

    pytestmark = distributed

    def test_something(make_cluster):            # the fixture: import it as well (`from tests.cluster import make_cluster`)
        cluster = make_cluster(config={"maxConcurrentCalls": 1}, nodes=2)
        cluster.rpc("voicecall.initiate", {...})

    def test_other(tmp_path):                    # or the context manager
        with cluster_running(tmp_path, workers=2) as (cluster, redis):
            ...

Skipped unless the run is distributed (DATABASE_URL on PostgreSQL and REDIS_URL set), like
tests/calls/test_distributed.py, though the cluster uses neither: each test gets a database and a
redis-server of its own, so parallel test workers never share queues or rows. Every process is
stopped after the test, passed or failed.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from django.conf import settings

from calls.cli.cluster import Cluster
from tests.faults.gateway import private_postgres
from tests.private_redis import PrivateRedis

distributed = pytest.mark.skipif(
    not settings.REDIS_URL or settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql",
    reason="needs DATABASE_URL=postgresql://... and REDIS_URL (distributed mode)",
)


@contextmanager
def cluster_running(directory: Path, *, timeout: float = 120.0, **options) -> Iterator[tuple[Cluster, PrivateRedis]]:
    """A started Cluster (keyword arguments as Cluster's) and its PrivateRedis; everything stopped and dropped after."""
    with ExitStack() as stack:
        database_url = stack.enter_context(private_postgres())
        redis = stack.enter_context(PrivateRedis())
        cluster = Cluster(Path(directory) / "data", database_url=database_url, redis_url=redis.url, **options)
        stack.callback(cluster.stop)  # also when start() fails halfway
        yield cluster.start(timeout=timeout), redis


@pytest.fixture
def make_cluster(tmp_path):
    """make_cluster(**Cluster options) → a started Cluster; its processes, database and Redis go at teardown.

    `make_cluster.redis` is the last cluster's PrivateRedis (stop/restart it for outage tests).
    """
    if not settings.REDIS_URL or settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
        pytest.skip("needs DATABASE_URL=postgresql://... and REDIS_URL (distributed mode)")
    with ExitStack() as stack:
        def make(**options) -> Cluster:
            index = len(list(tmp_path.glob("cluster-*")))
            cluster, make.redis = stack.enter_context(cluster_running(tmp_path / f"cluster-{index}", **options))
            return cluster

        make.redis = None
        yield make
