"""The ``redis`` channel: per-rank mailboxes in a Redis server.

See :mod:`afmi.channels.redis.channel` for the key layout and
:mod:`afmi.channels.redis.resp` for the pipelined data path.
"""

from afmi.channels.redis.channel import RedisChannel, RedisDriver, RedisEndpoint

__all__ = ["RedisChannel", "RedisDriver", "RedisEndpoint"]
