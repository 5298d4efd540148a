"""``afmi run -n N script.py [args]``: start N ranks as local processes.

The launcher starts an embedded rendezvous service, then N processes with
``AFMI_RANK``, ``AFMI_SIZE``, ``AFMI_JOB``, ``AFMI_CHANNEL``,
``AFMI_RENDEZVOUS`` and ``AFMI_TOKEN`` in their environment, so that
``async with afmi.connect() as comm:`` in the script joins the job. Output is
streamed line by line, prefixed with the rank (``[2] ...``). When a rank
exits with an error the others are stopped (SIGTERM, then SIGKILL after a
grace period) and the launcher exits with that rank's code. SIGINT (Ctrl-C),
SIGTERM and SIGHUP to the launcher stop every rank the same way before it
exits with 128 + the signal's number (:data:`STOP_SIGNALS`): a launcher killed
by a job scheduler or ``timeout`` leaves no rank running. On Linux a launcher
killed outright (SIGKILL) takes its ranks with it too: the kernel sends each
SIGTERM (:mod:`afmi.runtime.orphans`).

From Python, :func:`run_processes` does the same and returns the exit codes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import sys
import uuid
from collections.abc import Coroutine, Mapping, Sequence
from typing import IO, Any

from afmi.errors import ArgumentError
from afmi.launch import new_event_loop
from afmi.rendezvous.server import RendezvousServer
from afmi.runtime.orphans import guarded

__all__ = ["HELP", "STOP_SIGNALS", "add_arguments", "main", "run_processes"]

HELP = "run a script on N local processes joined into one afmi job"

#: Seconds between SIGTERM and SIGKILL when stopping ranks.
GRACE = 3.0
#: Signals on which ``afmi run`` stops every rank, then exits with 128 + the number.
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


class _StoppedBySignalError(Exception):
    """``afmi run`` received one of :data:`STOP_SIGNALS` and stopped its ranks."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


async def _until_signal(job: Coroutine[Any, Any, list[int]]) -> list[int]:
    """Await ``job``; on one of :data:`STOP_SIGNALS` cancel it (which stops its ranks)
    and raise :class:`_StoppedBySignalError`.

    The event loop's own signal handlers, not the interpreter's: without them
    SIGTERM ended the launcher at once and left its ranks running, and SIGINT
    relied on ``asyncio.Runner``'s handler reaching the loop.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    received: list[int] = []

    def stop(signum: int) -> None:
        if not received:  # a second signal while the ranks stop changes nothing
            received.append(signum)
            task.cancel()

    installed = []
    for signum in STOP_SIGNALS:
        try:
            loop.add_signal_handler(signum, stop, signum)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, Windows
            continue
        installed.append(signum)
    try:
        return await job
    except asyncio.CancelledError:
        if received:
            raise _StoppedBySignalError(received[0]) from None
        raise
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``afmi run``."""
    parser.add_argument("-n", "--np", type=int, required=True, help="number of ranks")
    parser.add_argument(
        "--channel", default="direct", help="channel the ranks use (AFMI_CHANNEL; default direct)"
    )
    parser.add_argument("--job", default=None, help="job name (default: a fresh unique name)")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address of the embedded rendezvous service"
    )
    parser.add_argument(
        "--timeout", type=float, default=None, help="stop every rank after this many seconds"
    )
    parser.add_argument("script", help="Python script (*.py) or executable to run on every rank")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the script")


def _command(script: str, args: Sequence[str]) -> list[str]:
    if script.endswith(".py"):
        if not os.path.exists(script):
            raise ArgumentError(f"script {script!r} does not exist")
        return [sys.executable, script, *args]
    return [script, *args]


def _cannot_start(program: str, size: int, exc: OSError) -> str:
    """What to change when ``program`` could not be started."""
    if isinstance(exc, FileNotFoundError):
        where = "no such file" if os.sep in program else "not found on PATH"
        return f"cannot start {program!r}: {where}; give the path to a program or a *.py script"
    if isinstance(exc, PermissionError):
        return (
            f"cannot start {program!r}: it is not executable; make it so (chmod +x) or name "
            f"its interpreter (afmi run -n {size} sh {program})"
        )
    return f"cannot start {program!r}: {exc.strerror or exc}"


async def _pump(stream: asyncio.StreamReader, rank: int, out: IO[str]) -> None:
    while line := await stream.readline():
        out.write(f"[{rank}] {line.decode(errors='replace')}")
        if not line.endswith(b"\n"):
            out.write("\n")
        out.flush()


async def _stop(procs: list[asyncio.subprocess.Process]) -> None:
    alive = [p for p in procs if p.returncode is None]
    for p in alive:
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(signal.SIGTERM)
    if not alive:
        return
    _, late = await asyncio.wait([asyncio.ensure_future(p.wait()) for p in alive], timeout=GRACE)
    for p in alive:
        if p.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
    for p in alive:
        await p.wait()
    for fut in late:
        await fut


async def run_processes(
    command: Sequence[str],
    size: int,
    *,
    channel: str = "direct",
    job: str | None = None,
    env: Mapping[str, str] | None = None,
    host: str = "127.0.0.1",
    timeout: float | None = None,
    output: IO[str] | None = None,
) -> list[int]:
    """Run ``command`` as ranks ``0..size-1``; return their exit codes in rank order.

    If a rank fails (non-zero exit) the others are stopped. ``timeout`` stops
    all ranks after that many seconds (their codes are then negative signal
    numbers). Cancelling the call stops every rank before it returns.
    """
    if type(size) is not int or size < 1:
        raise ArgumentError(f"-n must be a positive number of ranks, got {size!r}")
    out = output if output is not None else sys.stdout
    job = job or f"run-{uuid.uuid4().hex[:12]}"
    base = dict(os.environ if env is None else env)
    procs: list[asyncio.subprocess.Process] = []
    pumps: list[asyncio.Task[None]] = []
    async with RendezvousServer(host, 0) as rdv:
        token = secrets.token_urlsafe(24)
        try:
            for rank in range(size):
                child_env = dict(base)
                child_env.update(
                    AFMI_RANK=str(rank),
                    AFMI_SIZE=str(size),
                    AFMI_JOB=job,
                    AFMI_CHANNEL=channel,
                    AFMI_RENDEZVOUS=rdv.address,
                    AFMI_TOKEN=token,
                    PYTHONUNBUFFERED="1",
                )
                try:
                    proc = await asyncio.create_subprocess_exec(
                        *guarded(command, child_env),
                        stdin=asyncio.subprocess.DEVNULL,
                        stdout=asyncio.subprocess.PIPE,
                        stderr=asyncio.subprocess.STDOUT,
                        env=child_env,
                    )
                except OSError as exc:
                    raise ArgumentError(_cannot_start(command[0], size, exc)) from exc
                procs.append(proc)
                assert proc.stdout is not None
                pumps.append(asyncio.ensure_future(_pump(proc.stdout, rank, out)))
            async with asyncio.timeout(timeout):
                waits = {asyncio.ensure_future(p.wait()): p for p in procs}
                pending = set(waits)
                while pending:
                    done, pending = await asyncio.wait(pending, return_when="FIRST_COMPLETED")
                    if any(waits[d].returncode for d in done):
                        break
                for fut in pending:
                    fut.cancel()
        except TimeoutError:
            out.write(f"afmi run: job {job} stopped after {timeout} s\n")
        finally:
            # Stopping the ranks runs to its end even if this call is cancelled meanwhile
            # (Ctrl-C while a rank that ignores SIGTERM waits out the grace period): a
            # cancellation cut short here left that rank running.
            stopping = asyncio.ensure_future(_stop(procs))
            try:
                await asyncio.shield(stopping)
            except asyncio.CancelledError:
                await stopping
                raise
            for t in pumps:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(t, 5.0)
    return [p.returncode if p.returncode is not None else -9 for p in procs]


def main(args: argparse.Namespace) -> int:
    """Entry point of ``afmi run``; returns the exit code of the first failing rank."""
    try:
        command = _command(args.script, [a for a in args.args if a != "--"] if args.args else [])
    except ArgumentError as exc:
        print(f"afmi run: {exc}", file=sys.stderr)
        return 2
    runner = asyncio.Runner(loop_factory=new_event_loop)
    try:
        codes = runner.run(
            _until_signal(
                run_processes(
                    command,
                    args.np,
                    channel=args.channel,
                    job=args.job,
                    host=args.host,
                    timeout=args.timeout,
                )
            )
        )
    except ArgumentError as exc:
        print(f"afmi run: {exc}", file=sys.stderr)
        return 2
    except _StoppedBySignalError as stopped:
        name = signal.Signals(stopped.signum).name
        print(f"afmi run: {name} received, ranks stopped", file=sys.stderr)
        return 128 + stopped.signum
    except KeyboardInterrupt:  # Ctrl-C before the loop's handlers were installed
        print("afmi run: interrupted, ranks stopped", file=sys.stderr)
        return 130
    finally:
        runner.close()
    # Ranks that exited by themselves with an error first, then ranks stopped by a signal.
    failed = sorted(((r, c) for r, c in enumerate(codes) if c != 0), key=lambda rc: rc[1] < 0)
    if not failed:
        return 0
    rank, code = failed[0]
    print(f"afmi run: rank {rank} exited with code {code}", file=sys.stderr)
    return code if 0 < code < 256 else 1
