"""The Celery broker transport: kombu's Redis transport, made to survive the loss of Redis with a job in flight.

With late acknowledgement (every job here), a worker that loses Redis while a job runs closes its
broken connection and then its channel, which tries to put the unacknowledged job back through that
connection, already torn down: kombu raises AttributeError there instead of a connection error, and
the worker exits ("Unrecoverable error") instead of reconnecting. Here the torn-down connection is a
connection error, which the worker handles: it reconnects, and the job (still unacknowledged in
Redis if Redis kept it) is delivered again after the visibility timeout.
"""
from __future__ import annotations

from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError


class Channel(kombu_redis.Channel):
    def _connparams(self, asynchronous: bool = False):
        if self.connection is None or self.connection.client is None:
            raise RedisConnectionError("the broker connection is closed (Redis went away)")
        return super()._connparams(asynchronous=asynchronous)


class Transport(kombu_redis.Transport):
    Channel = Channel
