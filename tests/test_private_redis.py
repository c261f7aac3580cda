"""The private redis-server tests start: on its own free port, restarted on the same one, keeping nothing."""
from tests.private_redis import PrivateRedis
import redis
def test_private_redis_restarts_on_its_port():
    with PrivateRedis() as server:
        client = redis.Redis(port=server.port)
        client.set("k", "v")
        port = server.port
        server.restart()
        assert server.port == port and server.answers()
        assert client.get("k") is None  # nothing kept across the restart
