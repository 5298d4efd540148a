"""The rendezvous service: ranks of a job find each other (and, if needed, a relay).

Run it with ``afmi rendezvous --host H --port P`` or embed it::

    async with RendezvousServer("127.0.0.1", 0) as server:
        print(server.address)          # "127.0.0.1:41234"

Each rank opens a *session* (a connection that stays open while the rank
lives) and registers its job name, the job's secret token, its rank, the job
size and the endpoint it listens on. The first registration of a job name
creates the job with its token; later ones must present the same token
(compared in constant time), size and mode. Once all ranks are in, every
session receives the endpoints of all ranks; in ``punch`` mode the service
then orders both sides of every pair to connect to each other at once (TCP
simultaneous open). A ``relay`` request on a fresh connection is spliced
byte-for-byte with the peer's matching request: the fallback when no direct
path forms.

Every step has a timeout; malformed, oversized or out-of-order input gets an
``error`` reply naming the problem and only that connection is affected.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from afmi.config import DirectConfig
from afmi.errors import ArgumentError
from afmi.rendezvous.protocol import RendezvousError, pack, read_message
from afmi.rendezvous.protocol import field as get_field

__all__ = ["RendezvousServer"]

log = logging.getLogger("afmi.rendezvous")

MODES = ("listen", "punch", "relay")
_MAX_NAME = 256
_MAX_SIZE = 65536
_RELAY_CHUNK = 256 * 1024


@dataclass
class _Member:
    rank: int
    writer: asyncio.StreamWriter
    endpoint: tuple[str, int]


@dataclass
class _Job:
    name: str
    token: str
    size: int
    mode: str
    members: dict[int, _Member] = field(default_factory=dict)
    complete: bool = False
    timer: asyncio.TimerHandle | None = None


class RendezvousServer:
    """An asyncio rendezvous service; see the module docstring.

    Args:
        host: address to listen on.
        port: TCP port (0 picks a free one; read :attr:`address` after start).
        step_timeout: seconds a client has for each message it must send.
        job_timeout: seconds for all ranks of a job to register.
        relay_timeout: seconds a relay request waits for its partner.
        tcp_congestion: TCP congestion control of relayed connections, as
            ``channels.direct.tcp_congestion`` sets it on direct links (reno;
            None or ``"system"``: the machine's). :attr:`relayed_congestion` counts
            the relayed connections by the one in effect.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        step_timeout: float = 10.0,
        job_timeout: float = 60.0,
        relay_timeout: float = 30.0,
        tcp_congestion: str | None = DirectConfig.tcp_congestion,
    ) -> None:
        if type(port) is not int or not 0 <= port <= 65535:
            raise ArgumentError(f"port must be 0 (any free port) to 65535, got {port!r}")
        self.host = host
        self.port = port
        self.step_timeout = step_timeout
        self.job_timeout = job_timeout
        self.relay_timeout = relay_timeout
        self.tcp_congestion = DirectConfig(tcp_congestion=tcp_congestion).tcp_congestion
        #: Relayed connections by the TCP congestion control in effect on them.
        self.relayed_congestion: Counter[str] = Counter()
        self._server: asyncio.Server | None = None
        self._jobs: dict[str, _Job] = {}
        self._relay_waiting: dict[tuple[str, int, int], _RelayEnd] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Counters: connections, registrations, errors, relayed bytes.
        self.counters = {"connections": 0, "registered": 0, "errors": 0, "relayed_bytes": 0}

    # -- lifecycle --
    async def start(self) -> None:
        """Start listening."""
        if self._server is not None:
            return
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def address(self) -> str:
        """``host:port`` to give clients (``AFMI_RENDEZVOUS``)."""
        host = self.host if ":" not in self.host else f"[{self.host}]"
        return f"{host}:{self.port}"

    def jobs(self) -> list[str]:
        """Names of the jobs currently known."""
        return sorted(self._jobs)

    async def serve_forever(self) -> None:
        """Serve until cancelled."""
        await self.start()
        assert self._server is not None
        await self._server.serve_forever()

    async def aclose(self) -> None:
        """Stop listening and close every connection. Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for job in self._jobs.values():
            if job.timer is not None:
                job.timer.cancel()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()
        self._jobs.clear()
        self._relay_waiting.clear()

    async def __aenter__(self) -> RendezvousServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- connections --
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.counters["connections"] += 1
        try:
            await self._serve_connection(reader, writer)
        except asyncio.CancelledError:
            pass
        except (RendezvousError, OSError) as exc:
            self._reply_error(writer, str(exc))
        except Exception:  # noqa: BLE001 - one bad connection must not stop the service
            log.exception("rendezvous: unexpected error")
            self._reply_error(writer, "internal error in the rendezvous service")
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    def _reply_error(self, writer: asyncio.StreamWriter, message: str) -> None:
        self.counters["errors"] += 1
        if not writer.is_closing():
            writer.write(pack("error", message=message))

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            msg = await read_message(reader, self.step_timeout)
            op = msg["op"]
            try:
                if op == "register":
                    job, member = self._join(msg, writer)
                elif op == "relay":
                    name, rank, peer = self._check_relay(msg)
                else:
                    raise RendezvousError(f"expected 'register' or 'relay' first, got {op!r}")
            except RendezvousError as exc:
                # Well-framed but refused: say why and let the client try again.
                self._reply_error(writer, str(exc))
                await writer.drain()
                continue
            if op == "register":
                await self._session(job, member, reader, writer)
            else:
                await self._relay(name, rank, peer, reader, writer)
            return

    # -- sessions --
    def _check_register(self, msg: dict[str, Any]) -> tuple[str, str, int, int, str]:
        job = get_field(msg, "job", str)
        token = get_field(msg, "token", str)
        rank = get_field(msg, "rank", int)
        size = get_field(msg, "size", int)
        mode = get_field(msg, "mode", str)
        if not job or len(job) > _MAX_NAME or len(token) > _MAX_NAME:
            raise RendezvousError(f"job name and token must have 1..{_MAX_NAME} characters")
        if not 1 <= size <= _MAX_SIZE or not 0 <= rank < size:
            raise RendezvousError(f"rank {rank} / size {size} out of range")
        if mode not in MODES:
            raise RendezvousError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        return job, token, rank, size, mode

    def _join(self, msg: dict[str, Any], writer: asyncio.StreamWriter) -> tuple[_Job, _Member]:
        name, token, rank, size, mode = self._check_register(msg)
        job = self._jobs.get(name)
        if job is None:
            job = _Job(name, token, size, mode)
            job.timer = asyncio.get_running_loop().call_later(self.job_timeout, self._expire, job)
            self._jobs[name] = job
        elif not hmac.compare_digest(job.token.encode(), token.encode()):
            raise RendezvousError(f"wrong token for job {name!r}")
        if job.size != size or job.mode != mode:
            raise RendezvousError(
                f"job {name!r} has size {job.size} and mode {job.mode!r}; "
                f"this rank says size {size}, mode {mode!r}"
            )
        if rank in job.members:
            raise RendezvousError(f"rank {rank} of job {name!r} is already registered")
        if job.complete:
            raise RendezvousError(f"job {name!r} has already started")
        if mode == "punch":
            peer = writer.get_extra_info("peername")
            endpoint = (str(peer[0]), int(peer[1]))
        else:
            endpoint = (get_field(msg, "host", str), get_field(msg, "port", int))
        member = _Member(rank, writer, endpoint)
        job.members[rank] = member
        self.counters["registered"] += 1
        return job, member

    async def _session(
        self,
        job: _Job,
        member: _Member,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        try:
            writer.write(pack("registered", rank=member.rank, endpoint=list(member.endpoint)))
            if len(job.members) == job.size:
                self._start_job(job)
            # The session stays open while the rank lives; later input is out of order.
            while True:
                try:
                    extra = await read_message(reader, None)
                except RendezvousError as exc:
                    if reader.at_eof():
                        return
                    raise exc
                self._reply_error(writer, f"unexpected {extra['op']!r} after register")
        finally:
            job.members.pop(member.rank, None)
            if not job.members:
                self._drop(job)

    def _start_job(self, job: _Job) -> None:
        job.complete = True
        if job.timer is not None:
            job.timer.cancel()
        endpoints = [list(job.members[r].endpoint) for r in range(job.size)]
        for m in job.members.values():
            m.writer.write(pack("peers", endpoints=endpoints))
        if job.mode == "punch":
            # Both sides of every pair hear "connect now" in the same loop iteration.
            for a in range(job.size):
                for b in range(a + 1, job.size):
                    for me, other in ((a, b), (b, a)):
                        host, port = job.members[other].endpoint
                        job.members[me].writer.write(
                            pack("punch", peer=other, host=host, port=port)
                        )

    def _expire(self, job: _Job) -> None:
        if job.complete or self._jobs.get(job.name) is not job:
            return
        message = (
            f"job {job.name!r}: only {len(job.members)} of {job.size} ranks registered "
            f"within {self.job_timeout} s"
        )
        for m in job.members.values():
            self._reply_error(m.writer, message)
            m.writer.close()
        self._drop(job)

    def _drop(self, job: _Job) -> None:
        if job.timer is not None:
            job.timer.cancel()
        if self._jobs.get(job.name) is job:
            del self._jobs[job.name]

    # -- relay --
    def _check_relay(self, msg: dict[str, Any]) -> tuple[str, int, int]:
        name = get_field(msg, "job", str)
        token = get_field(msg, "token", str)
        rank = get_field(msg, "rank", int)
        peer = get_field(msg, "peer", int)
        job = self._jobs.get(name)
        if job is None or not hmac.compare_digest(job.token.encode(), token.encode()):
            raise RendezvousError(f"relay refused: no job {name!r} with this token")
        if not (0 <= rank < job.size and 0 <= peer < job.size) or rank == peer:
            raise RendezvousError(f"relay between ranks {rank} and {peer} is out of range")
        if (name, rank, peer) in self._relay_waiting:
            raise RendezvousError(f"a relay from rank {rank} to {peer} is already waiting")
        return name, rank, peer

    async def _relay(
        self,
        name: str,
        rank: int,
        peer: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        key = (name, rank, peer)
        partner = self._relay_waiting.pop((name, peer, rank), None)
        if partner is None:
            end = _RelayEnd(reader, writer)
            self._relay_waiting[key] = end
            try:
                async with asyncio.timeout(self.relay_timeout):
                    await end.done
            except TimeoutError:
                raise RendezvousError(
                    f"relay: rank {peer} did not ask for a relay to rank {rank} "
                    f"within {self.relay_timeout} s"
                ) from None
            finally:
                if self._relay_waiting.get(key) is end:
                    del self._relay_waiting[key]
            return
        # Second arrival: splice both connections until one side closes.
        from afmi.channels.direct.tcp import set_congestion  # (the package imports this one)

        try:
            for w in (partner.writer, writer):
                sock = w.get_extra_info("socket")
                if sock is not None:  # relayed data gets the direct links' congestion control
                    in_effect = set_congestion(sock, self.tcp_congestion)
                    self.relayed_congestion[in_effect or "unknown"] += 1
                w.write(pack("relayed", job=name))
            await asyncio.gather(
                self._pump(reader, partner.writer),
                self._pump(partner.reader, writer),
                return_exceptions=True,
            )
        finally:
            partner.writer.close()
            if not partner.done.done():
                partner.done.set_result(None)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # End of input from one side is passed on as a half-close, so a goodbye reaches
        # the other side intact and that side can still answer; an error drops both.
        try:
            while data := await reader.read(_RELAY_CHUNK):
                writer.write(data)
                self.counters["relayed_bytes"] += len(data)
                await writer.drain()
            if writer.can_write_eof() and not writer.is_closing():
                writer.write_eof()
        except OSError:
            writer.close()
            raise


class _RelayEnd:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
