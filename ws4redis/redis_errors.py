"""What a Redis failure means for ws4redis' callers: one exception for "the message broker is away".

``RedisPublisher.publish_message`` (and everything built on
``RedisStore.publish_message``) raises :class:`BrokerUnavailable` when Redis
cannot be reached or does not answer in time. It is a
``redis.ConnectionError`` too, so code written for django-websocket-redis
0.6.0 that catches redis-py's error keeps working; Django projects that add
``ws4redis.middleware.BrokerUnavailableMiddleware`` answer it with a 503 and
a readable body instead of the generic 500.
"""

from __future__ import annotations

import redis
from redis.exceptions import ClusterDownError, RedisClusterException

from ws4redis.exceptions import WebSocketError

__all__ = ["UNAVAILABLE", "BrokerUnavailable"]

# redis-py errors meaning "Redis is not there right now", as opposed to a refused command: on a
# cluster also no reachable node (RedisClusterException) and slots without a master (CLUSTERDOWN).
UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, RedisClusterException, ClusterDownError)


class BrokerUnavailable(WebSocketError, redis.ConnectionError):
    """Redis cannot be reached: the message was not published (retry later)."""
