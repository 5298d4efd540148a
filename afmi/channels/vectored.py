"""Writing a list of buffers to an asyncio transport without joining them first.

``transport.writelines(buffers)`` on asyncio's own socket transports before
Python 3.12 is the base class's: it joins the buffers into one ``bytes`` (a copy
of every byte, a fresh allocation for a large message) and then copies again the
part the kernel did not take. uvloop's transports, and asyncio's from 3.12, hand
the buffers to the kernel as they are. :class:`VectoredWriter` closes the gap:
where the transport would join, and nothing is queued in it, it writes a large
list of buffers itself with one ``os.writev`` and gives the transport only what
the kernel did not take (one copy of that part). Both the direct channel's links
and the Redis channel's connections write through it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import Any

__all__ = ["VECTORED_MIN_BYTES", "VectoredWriter", "joins_to_write"]

#: Lists of buffers from this many bytes on are written with ``writev``; below it a
#: joined copy costs less than the views and the system call's setup.
VECTORED_MIN_BYTES = 32 * 1024
#: The most buffers one ``writev`` takes (POSIX: IOV_MAX, at least 16; Linux 1024).
IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 16


def joins_to_write(transport: asyncio.BaseTransport) -> bool:
    """Whether ``transport.writelines`` joins its buffers into one copy first, on a
    plain socket this process can ``writev`` to (not TLS, not a pipe)."""
    return (
        hasattr(os, "writev")
        and getattr(type(transport), "writelines", None) is asyncio.WriteTransport.writelines
        and transport.get_extra_info("ssl_object") is None
        and transport.get_extra_info("socket") is not None
    )


class VectoredWriter:
    """``writelines`` for ``transport`` that never joins a large list of buffers.

    Byte order on the connection is kept: the writer writes to the socket itself
    only while the transport has nothing queued, and whatever the kernel did not
    take goes to the transport before anything written later.
    """

    def __init__(self, transport: asyncio.BaseTransport, min_bytes: int = VECTORED_MIN_BYTES):
        self.transport: Any = transport
        self.min_bytes = int(min_bytes)
        #: The socket's descriptor, or -1 where the transport's ``writelines`` is used.
        self.fd = transport.get_extra_info("socket").fileno() if joins_to_write(transport) else -1
        if self.fd < 0:  # nothing to decide per write: the transport's own, called directly
            own: Any = transport
            self.writelines = own.writelines  # type: ignore[method-assign]

    @property
    def vectored(self) -> bool:
        """Whether large lists of buffers go out with ``writev``."""
        return self.fd >= 0

    def writelines(self, buffers: Sequence[Any]) -> None:
        """Write ``buffers`` in order (see the class docstring)."""
        transport = self.transport
        if (
            not 1 < len(buffers) <= IOV_MAX
            or transport.get_write_buffer_size() != 0
            or transport.is_closing()
        ):
            transport.writelines(buffers)
            return
        views = [memoryview(b).cast("B") for b in buffers]
        if sum(len(v) for v in views) < self.min_bytes:
            transport.writelines(buffers)
            return
        try:
            sent = os.writev(self.fd, views)
        except OSError:  # full (BlockingIOError) or broken: the transport finds out which
            sent = 0
        for view in views:  # what the kernel did not take: the transport keeps a copy
            if sent >= len(view):
                sent -= len(view)
                continue
            transport.write(view[sent:] if sent else view)
            sent = 0
