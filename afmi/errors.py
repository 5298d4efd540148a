"""Exceptions raised by afmi.

Every error afmi raises derives from :class:`AfmiError`, and also from the
built-in exception a Python user would expect (``ValueError`` for bad
arguments, ``TypeError`` for unsupported payloads, ``TimeoutError`` for
operations past their deadline), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = [
    "AfmiError",
    "ArgumentError",
    "ChannelError",
    "ConfigError",
    "OperationTimeoutError",
    "PayloadTypeError",
    "RankFailedError",
]


class AfmiError(Exception):
    """Base class of every error raised by afmi."""


class ArgumentError(AfmiError, ValueError):
    """An argument is out of range or malformed (rank, root, tag, size, op, ...)."""


class ConfigError(ArgumentError):
    """A configuration key is unknown, ill-typed or has a bad value."""


class PayloadTypeError(AfmiError, TypeError):
    """A payload holds an object afmi cannot serialize without pickle."""


class OperationTimeoutError(AfmiError, TimeoutError):
    """An operation did not complete within its timeout.

    After a point-to-point timeout nothing is lost: a message that arrives
    later stays queued for the next matching receive.
    """


class ChannelError(AfmiError, ConnectionError):
    """A channel broke or a peer died; pending operations fail with this error."""

    def __init__(self, message: str, peer: int | None = None) -> None:
        super().__init__(message)
        #: World rank of the peer involved, when known.
        self.peer = peer


class RankFailedError(AfmiError):
    """A rank of a job raised; the original exception is the ``__cause__``."""

    def __init__(self, rank: int, error: BaseException) -> None:
        super().__init__(f"rank {rank} failed: {type(error).__name__}: {error}")
        #: The rank that failed first.
        self.rank = rank
        #: The exception that rank raised.
        self.error = error
