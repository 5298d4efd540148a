"""Socket options of direct links: no Nagle delay, keepalive, and the congestion control.

The congestion control matters more than it looks. Linux lets a socket pick its
own (``TCP_CONGESTION``); the system default is whatever the machine set, and
on this project's machine it is BBR. BBR paces every connection to the
bandwidth it has estimated, so once a link has carried a few large messages, a
256 KiB message waits out its pacing instead of going out at once. Measured
on loopback, one event loop, a plain socket pair (2026-12-06):

============  =======  =======  ========
message       BBR      cubic    BBR/cubic
============  =======  =======  ========
256 KiB       118 µs   65 µs    1.8
1 MiB         350 µs   161 µs   2.2
4 MiB         1.5 ms   0.64 ms  2.3
============  =======  =======  ========

(BBR's figures are after the link has carried 4 MiB messages; before, they
match cubic's.) So links asked for cubic, Linux's usual default, until
session 22 found cubic slow too on this machine's kernel (6.18): plain
non-blocking sockets in one thread, a ping-pong of 512 KiB took 107-133 µs
with cubic and 37-40 µs with reno, 1 MiB 316-380 and 128-160 µs, 4 MiB
1.34-1.40 and 0.78-1.09 ms (four connections each, 128 KiB 10 µs with all
three). Links now ask for reno (``channels.direct.tcp_congestion``), which was
as fast or faster at every size measured, and which Linux lets an
unprivileged process choose unless an administrator removed it
(``net.ipv4.tcp_allowed_congestion_control`` lists reno and the default
by default): cubic is allowed there only where it is the default. A
machine that does not offer the one asked for keeps its default, with one
warning. docs/direct.md has the figures through afmi, in one process and
across processes.
"""

from __future__ import annotations

import contextlib
import logging
import socket

__all__ = ["congestion", "segment_bytes", "set_congestion", "tune"]

log = logging.getLogger("afmi.direct")

_KEEPALIVE = [
    (getattr(socket, name), value)
    for name, value in (("TCP_KEEPIDLE", 15), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3))
    if hasattr(socket, name)
]
_warned: set[str] = set()
#: Bytes :func:`segment_bytes` sends before it reads the segment size.
_PROBE_BYTES = 256 * 1024


def congestion(sock: socket.socket) -> str | None:
    """The congestion control ``sock`` uses, or None where the platform does not say."""
    option = getattr(socket, "TCP_CONGESTION", None)
    if option is None:
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, option, 16)
    except OSError:
        return None
    return raw.split(b"\0", 1)[0].decode("ascii", "replace") or None


def set_congestion(sock: socket.socket, name: str | None) -> str | None:
    """Ask for congestion control ``name`` on ``sock`` (None: leave the system's).

    Returns the one in effect afterwards. Where the platform has no such
    option (not Linux), nothing changes. Where the kernel refuses ``name``
    (not built, not loaded, or not in ``net.ipv4.tcp_allowed_congestion_control``
    for an unprivileged process), the socket keeps the default and the first
    refusal of each name is logged as a warning on ``afmi.direct``.
    """
    option = getattr(socket, "TCP_CONGESTION", None)
    if name is None or option is None:
        return congestion(sock)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, option, name.encode("ascii"))
    except OSError as exc:
        if name not in _warned:
            _warned.add(name)
            log.warning(
                "channels.direct.tcp_congestion=%r: this machine refuses it (%s); links keep "
                "the system's congestion control %r. Set tcp_congestion to one listed in "
                "/proc/sys/net/ipv4/tcp_allowed_congestion_control, or to 'system'.",
                name,
                exc.strerror or exc,
                congestion(sock),
            )
    return congestion(sock)


def tune(sock: socket.socket, congestion_control: str | None) -> None:
    """The options every direct link sets: ``TCP_NODELAY``, keepalive probes after
    15 s of silence, and the congestion control (the bench's plain-socket anchors set
    the first and the last)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # A peer whose machine vanishes sends no FIN or RST: keepalive probes
        # notice it after about 30 s of silence and break the link.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in _KEEPALIVE:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)
    set_congestion(sock, congestion_control)


def segment_bytes(host: str = "127.0.0.1") -> int | None:
    """The payload bytes of one TCP segment (the MSS) on a connection to ``host``, or None
    where the platform does not say. Opens a listener and a connection to it and sends
    256 KiB through it: until data has flowed, Linux reports half the peer's first
    window (32741 on loopback here).

    On loopback (MTU 65536) it is 65483 here. A direct link's frame longer than that
    goes out as several segments, which costs more than its bytes (docs/direct.md,
    "Messages longer than a TCP segment"); the bench's calibration reads it here.
    """
    option = getattr(socket, "TCP_MAXSEG", None)
    if option is None:
        return None
    try:
        with socket.create_server((host, 0)) as server:
            with socket.create_connection(server.getsockname()[:2], timeout=5.0) as client:
                peer, _ = server.accept()
                with peer:
                    peer.settimeout(5.0)
                    piece = bytes(_PROBE_BYTES // 4)
                    for _ in range(4):  # a piece at a time: no buffer has to hold it all
                        client.sendall(piece)
                        got = 0
                        while got < len(piece):
                            chunk = peer.recv(len(piece) - got)
                            if not chunk:
                                return None
                            got += len(chunk)
                    value = int(client.getsockopt(socket.IPPROTO_TCP, option))
    except OSError:
        return None
    return value if value > 0 else None
