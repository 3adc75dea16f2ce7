"""ws4redis: websockets for Django with Redis pub/sub as the message bus.

A drop-in successor of django-websocket-redis 0.6.0 whose RFC 6455 hot path
(masking, UTF-8 validation, frame parsing) is compiled with Cython.
"""

__version__ = "1.0.0.dev0"
