"""Processes afmi starts end when the afmi process that started them is killed outright.

Each test starts a real parent process, lets it start its children the way afmi does,
SIGKILLs the parent (no ``finally`` runs) and checks that the children are gone.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from afmi.runtime import orphans
from afmi.runtime.orphans import guarded
from afmi.testing import servers

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's"
)


def _alive(pid: int) -> bool:
    # a child reparented to an init that does not reap shows as a zombie: that is gone too
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _gone_within(pids: list[int], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        alive = [p for p in pids if _alive(p)]
        if not alive:
            return []
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


def _kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _parent(code: str, expect: int) -> tuple[subprocess.Popen[str], list[int]]:
    """Start ``code`` in a parent process; it prints one child pid a line."""
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    pids: list[int] = []
    while len(pids) < expect:
        line = parent.stdout.readline()
        if not line:
            parent.kill()
            raise AssertionError(f"the parent exited after {len(pids)} of {expect} children")
        if line.strip().isdigit():
            pids.append(int(line))
    return parent, pids


def _kill_parent_and_check(parent: subprocess.Popen[str], children: list[int]) -> None:
    assert all(_alive(p) for p in children)
    parent.kill()
    parent.wait()
    left = _gone_within(children, 15)
    _kill_all(left)
    assert not left, f"children {left} outlived their SIGKILLed parent"


def test_a_guarded_child_dies_with_its_parent():
    parent, children = _parent(
        """
        import subprocess, sys, time
        from afmi.runtime.orphans import guarded
        child = subprocess.Popen(guarded([sys.executable, "-c", "import time; time.sleep(120)"]))
        print(child.pid, flush=True)
        time.sleep(120)
        """,
        1,
    )
    _kill_parent_and_check(parent, children)


def test_an_unguarded_child_outlives_its_parent():
    # the case guarded() exists for: without it the child keeps running
    parent, children = _parent(
        """
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        print(child.pid, flush=True)
        time.sleep(120)
        """,
        1,
    )
    parent.kill()
    parent.wait()
    try:
        assert _gone_within(children, 1) == children
    finally:
        _kill_all(children)


def test_ranks_of_a_killed_afmi_run_are_stopped(tmp_path):
    script = tmp_path / "rank.py"
    script.write_text("import os, time\nprint(os.getpid(), flush=True)\ntime.sleep(120)\n")
    launcher = subprocess.Popen(
        [sys.executable, "-m", "afmi", "run", "-n", "2", str(script)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert launcher.stdout is not None
    ranks: list[int] = []
    while len(ranks) < 2:
        line = launcher.stdout.readline()
        assert line, "afmi run exited before both ranks started"
        ranks.append(int(line.split("]", 1)[1]))  # "[r] pid"
    _kill_parent_and_check(launcher, ranks)  # type: ignore[arg-type]


@pytest.mark.skipif(servers._redis_binary() is None, reason="no redis-server binary")
def test_a_private_test_server_dies_with_the_test_process():
    parent, children = _parent(
        """
        import time
        from afmi.testing import servers
        binary = servers._redis_binary()
        argv = lambda port: [binary, "--port", str(port), "--save", "", "--appendonly", "no"]
        with servers._started(argv, 20) as (port, proc):
            print(proc.pid, flush=True)
            time.sleep(120)
        """,
        1,
    )
    _kill_parent_and_check(parent, children)


def test_a_guarded_command_keeps_its_pid_output_and_exit_code():
    proc = subprocess.run(
        guarded(["sh", "-c", "echo $$; exit 7"]), capture_output=True, text=True, check=False
    )
    assert proc.returncode == 7
    # the wrapper replaced itself with the command: the pid the caller saw is the shell's
    started = subprocess.Popen(guarded(["sh", "-c", "echo $$"]), stdout=subprocess.PIPE, text=True)
    out, _ = started.communicate()
    assert int(out) == started.pid


def test_the_wrapper_exits_if_its_parent_is_already_gone():
    # the parent id it was given is not its parent's: as if the parent died first
    argv = guarded(["sh", "-c", "exit 0"])
    argv[argv.index(str(os.getpid()))] = "1"
    assert subprocess.run(argv, check=False).returncode == 128 + signal.SIGTERM


def test_the_command_still_runs_where_the_request_cannot_be_made():
    # a Python without ctypes: the wrapper cannot guard, but must not stop the command
    boot = "import sys; sys.modules['ctypes'] = None\n" + orphans._BOOT
    argv = [sys.executable, "-I", "-S", "-c", boot, str(os.getpid()), "sh", "-c", "exit 5"]
    assert subprocess.run(argv, check=False).returncode == 5


def test_guarded_leaves_what_it_cannot_wrap_unchanged():
    missing = ["afmi-no-such-command-here", "x"]
    assert guarded(missing) == missing  # so the caller gets its usual FileNotFoundError
    with pytest.raises(ValueError, match="needs a command"):
        guarded([])
    assert orphans.guarded(["sh"])[-1] == "sh"
    # found or not on the PATH the command will get, not this process's
    assert guarded(["sh"], env={"PATH": "/afmi-nowhere"}) == ["sh"]
    wrapped = guarded(["sh"], env={"PATH": os.defpath})
    assert wrapped[0] == sys.executable and wrapped[-1] == "sh"
