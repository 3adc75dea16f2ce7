"""What every websocket server of ws4redis shares; the servers themselves are thin front doors.

* :mod:`~ws4redis.server.config`: ``ServerConfig``, the settings read once at start-up.
* :mod:`~ws4redis.server.accept`: ``accept()``, the whole handshake decision as a value.
* :mod:`~ws4redis.server.rules`: the per-connection policy, sans I/O (echo, heartbeat, keepalive).
* :mod:`~ws4redis.server.interfaces`: the named interfaces between servers, connections and the hub.
* :mod:`~ws4redis.server.evented`: the connection on libev watchers (gevent server, uWSGI).
* :mod:`~ws4redis.server.relay`: the blocking relay (development server).

Nothing is imported here, so that a module needing one rule does not load every server part.
"""
