"""Child processes that end when the afmi process that started them dies.

A launcher that is killed outright (``kill -9``, the out-of-memory killer, a CI
job's hard timeout) runs no ``finally`` block, so the ranks of ``afmi run``, the
Redis and moto servers of :mod:`afmi.testing.servers` and the bench's helper
processes would keep running, orphaned. On Linux, :func:`guarded` wraps a
command so that the kernel sends the child SIGTERM when its parent dies
(``prctl(PR_SET_PDEATHSIG)``).

The request has to be made by the child itself, after ``fork``. Python's
``preexec_fn`` could do that but is unsafe in a process with threads, so the
wrapper is a separate step instead: a small isolated interpreter (``python -I
-S``, about 13 ms) makes the request, checks that its parent is still the
process that started it, then replaces itself with the command (``execvp``;
the request survives it). The child keeps the wrapper's process id, so the
caller's handle, signals and exit code are the command's own.

Linux ties the signal to the *thread* that forked the child: start guarded
processes from a thread that outlives them (the event loop's, or the main
thread). Elsewhere than Linux, and when the command cannot be found (so that
the caller gets the usual error), :func:`guarded` returns the command unchanged.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping, Sequence

__all__ = ["guarded"]

#: Run by ``python -I -S -c`` with argv ``[parent pid, command...]``. 1 is
#: PR_SET_PDEATHSIG; 15 is SIGTERM. A parent that died before the request took
#: effect shows as a changed parent id: exit as if the signal had come. Where the
#: request cannot be made (a Python built without ctypes, a sandbox that forbids
#: prctl) the command still runs, unguarded, as it would without the wrapper.
_BOOT = (
    "import os, sys\n"
    "try:\n"
    "    import ctypes\n"
    "    ctypes.CDLL(None).prctl(1, 15, 0, 0, 0)\n"
    "except Exception:\n"
    "    pass\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    os._exit(128 + 15)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def guarded(argv: Sequence[str], env: Mapping[str, str] | None = None) -> list[str]:
    """``argv`` wrapped so that its process gets SIGTERM when this process dies.

    Returns ``argv`` unchanged where that cannot be arranged: on platforms other
    than Linux, without a known Python executable, or when ``argv[0]`` is not
    found on the ``PATH`` of ``env``, the environment the command will get (this
    process's when None), so that the caller gets its usual error from starting it.
    """
    command = list(argv)
    if not command:
        raise ValueError("guarded() needs a command")
    if not sys.platform.startswith("linux") or not sys.executable:
        return command
    path = (os.environ if env is None else env).get("PATH", os.defpath)
    if shutil.which(command[0], path=path) is None:
        return command
    return [sys.executable, "-I", "-S", "-c", _BOOT, str(os.getpid()), *command]
