"""`afmi run`: ranks as processes over the direct channel, the conformance suite across processes,
peer death, failure propagation."""

import asyncio
import base64
import io
import os
import pickle
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from afmi.rendezvous import RendezvousServer
from afmi.runtime.process import run_processes
from afmi.testing import conformance

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
RANK_MAIN = str(HERE / "rank_main.py")


def make_runner(env, tmp_path):
    """A conformance runner that starts every rank as its own process via run_processes."""

    async def run(main, size, *args):
        outdir = tmp_path / f"{main.__name__}-{size}"
        outdir.mkdir()
        blob = base64.b64encode(pickle.dumps(args)).decode()
        target = f"{main.__module__}:{main.__qualname__}"
        out = io.StringIO()
        codes = await run_processes(
            [sys.executable, RANK_MAIN, target, str(outdir), blob],
            size,
            env=env,
            timeout=120,
            output=out,
        )
        assert codes == [0] * size, out.getvalue()
        results = []
        for r in range(size):
            with open(outdir / f"rank{r}.pkl", "rb") as f:
                results.append(pickle.load(f))
        return results

    return run


@pytest.mark.slow
@pytest.mark.parametrize("case", conformance.CASES, ids=conformance.case_id)
async def test_conformance_across_processes(case, subprocess_env, tmp_path):
    await case(make_runner(subprocess_env, tmp_path))


def test_afmi_run_example_prefixes_output(afmi_cli):
    res = afmi_cli("run", "-n", "3", "examples/run_allreduce.py", cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = sorted(res.stdout.splitlines())
    assert len(lines) == 3, res.stdout
    landed = 0
    for r, line in enumerate(lines):
        # 3 steps; the last sums ranks 0..2 plus 3 x step 2: 3 + 6
        m = re.fullmatch(
            rf"\[{r}\] rank {r}/3: allreduce -> 9 \(expected 9\), (\d+) messages received in place",
            line,
        )
        assert m, line
        landed += int(m.group(1))
    assert landed > 0  # the ring received into the reused out= array


def test_afmi_run_sets_environment(afmi_cli, tmp_path):
    script = tmp_path / "env.py"
    script.write_text(
        "import os\n"
        "keys = ['AFMI_RANK', 'AFMI_SIZE', 'AFMI_JOB', 'AFMI_CHANNEL']\n"
        "print(' '.join(os.environ[k] for k in keys), bool(os.environ['AFMI_TOKEN']),"
        " os.environ['AFMI_RENDEZVOUS'].startswith('127.0.0.1:'))\n"
    )
    res = afmi_cli("run", "-n", "2", "--job", "jx", str(script), cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    assert sorted(res.stdout.splitlines()) == [
        "[0] 0 2 jx direct True True",
        "[1] 1 2 jx direct True True",
    ]


def test_afmi_run_failing_rank_stops_the_others(afmi_cli, tmp_path):
    script = tmp_path / "fail.py"
    script.write_text(
        "import os, sys, time\n"
        "if os.environ['AFMI_RANK'] == '1':\n"
        "    print('bye'); sys.exit(3)\n"
        "time.sleep(600)\n"
    )
    res = afmi_cli("run", "-n", "3", str(script), cwd=ROOT, timeout=60)
    assert res.returncode == 3
    assert "[1] bye" in res.stdout
    assert "rank 1 exited with code 3" in res.stderr


def test_afmi_run_rejects_missing_script(afmi_cli):
    res = afmi_cli("run", "-n", "2", "no_such_script.py", cwd=ROOT, timeout=120)
    assert res.returncode == 2
    assert "does not exist" in res.stderr


def test_afmi_run_says_why_a_program_cannot_start(afmi_cli, tmp_path):
    # both used to end in a traceback from the event loop's subprocess call
    res = afmi_cli("run", "-n", "2", "afmi-no-such-program", cwd=ROOT, timeout=120)
    assert res.returncode == 2, res.stderr
    assert "cannot start 'afmi-no-such-program': not found on PATH" in res.stderr
    assert "Traceback" not in res.stderr
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\necho $AFMI_RANK\n")  # not executable
    res = afmi_cli("run", "-n", "2", str(script), cwd=ROOT, timeout=120)
    assert res.returncode == 2, res.stderr
    assert "is not executable" in res.stderr and f"sh {script}" in res.stderr
    assert "Traceback" not in res.stderr


async def test_run_processes_raises_argument_error_for_a_missing_program(tmp_path):
    from afmi.errors import ArgumentError

    with pytest.raises(ArgumentError, match="no such file"):
        await run_processes([str(tmp_path / "nothing-here")], 2, timeout=30)
    # the ranks' PATH decides, not the launcher's
    with pytest.raises(ArgumentError, match="'sh': not found on PATH"):
        await run_processes(["sh", "-c", "true"], 1, env={"PATH": str(tmp_path)}, timeout=30)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_to_afmi_run_stops_all_ranks(subprocess_env, tmp_path, signum):
    # SIGINT is Ctrl-C; SIGTERM is what `kill`, `timeout` and job schedulers send
    # (it used to end the launcher at once and leave its ranks running)
    script = tmp_path / "sleep.py"
    pidfile = tmp_path / "pids"
    script.write_text(
        "import os, time\n"
        f"open({str(pidfile)!r}, 'a').write(str(os.getpid()) + '\\n')\n"
        "print('up', flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "afmi", "run", "-n", "2", str(script)],
        env=subprocess_env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        seen = 0
        while seen < 2:
            line = proc.stdout.readline()
            assert line, "launcher ended early"
            seen += line.endswith("up\n")
        proc.send_signal(signum)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(
                f"afmi run did not stop within 30 s of {signum.name}; "
                f"stdout {out!r}, stderr {err!r}"
            )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        alive = []
        for pid in pidfile.read_text().split() if pidfile.exists() else []:
            try:
                os.kill(int(pid), signal.SIGKILL)  # leave nothing behind, even on failure
                alive.append(int(pid))
            except ProcessLookupError:
                pass
    assert proc.returncode == 128 + signum, err
    assert f"{signum.name} received, ranks stopped" in err
    assert alive == [], f"ranks {alive} were still running after afmi run exited"


PEER_DEATH = """
import asyncio, os, sys, afmi
async def main():
    async with afmi.connect() as comm:
        await comm.barrier()
        print('ready', flush=True)
        if comm.rank == 1:
            await asyncio.sleep(600)
        try:
            await comm.recv(1, timeout=60)
        except afmi.ChannelError as exc:
            print('ChannelError peer', exc.peer, exc, flush=True)
        except Exception as exc:
            print('other', type(exc).__name__, exc, flush=True)
asyncio.run(main())
"""


async def test_killed_rank_fails_peers_with_channel_error(subprocess_env, tmp_path):
    script = tmp_path / "death.py"
    script.write_text(PEER_DEATH)
    async with RendezvousServer() as rdv:
        procs = []
        for rank in range(2):
            env = dict(subprocess_env)
            env.update(
                AFMI_RANK=str(rank),
                AFMI_SIZE="2",
                AFMI_JOB="death",
                AFMI_RENDEZVOUS=rdv.address,
                AFMI_TOKEN="secret",
            )
            procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable, str(script), env=env, stdout=asyncio.subprocess.PIPE
                )
            )
        try:
            for p in procs:
                assert (await p.stdout.readline()).strip() == b"ready"
            procs[1].kill()  # rank 1 dies mid-job, without a goodbye
            await procs[1].wait()
            line = (await asyncio.wait_for(procs[0].stdout.readline(), 50)).decode()
            await procs[0].wait()
        finally:
            for p in procs:
                if p.returncode is None:
                    p.kill()
                    await p.wait()
    assert line.startswith("ChannelError peer 1 "), line
    assert "rank 1" in line
    assert procs[0].returncode == 0


async def test_run_processes_timeout_stops_every_rank(subprocess_env, tmp_path):
    script = tmp_path / "hang.py"
    script.write_text("import time\nprint('up', flush=True)\ntime.sleep(600)\n")
    out = io.StringIO()
    codes = await run_processes(
        [sys.executable, str(script)], 2, env=subprocess_env, timeout=1.0, output=out
    )
    assert codes == [-signal.SIGTERM, -signal.SIGTERM]
    assert "stopped after 1.0 s" in out.getvalue()


STUBBORN = """
import os, signal, sys, time
pidfile = sys.argv[1]
if os.environ["AFMI_RANK"] == "1":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only SIGKILL stops this rank
    open(pidfile + ".tmp", "w").write(str(os.getpid()))
    os.rename(pidfile + ".tmp", pidfile)
    time.sleep(600)
while not os.path.exists(pidfile):
    time.sleep(0.01)
sys.exit(3)  # rank 0 fails: the launcher starts stopping rank 1
"""


async def test_cancelling_run_processes_while_it_stops_ranks_still_stops_them(
    subprocess_env, tmp_path
):
    # A Ctrl-C, or a caller's cancel, that comes while the launcher is waiting out
    # the grace period of a rank that ignores SIGTERM must not leave that rank running.
    script = tmp_path / "stubborn.py"
    script.write_text(STUBBORN)
    pidfile = tmp_path / "rank1.pid"
    job = asyncio.ensure_future(
        run_processes(
            [sys.executable, str(script), str(pidfile)], 2, env=subprocess_env, output=io.StringIO()
        )
    )
    try:
        async with asyncio.timeout(30):
            while not pidfile.exists():
                await asyncio.sleep(0.02)
        pid = int(pidfile.read_text())
        await asyncio.sleep(1.0)  # rank 0 has failed; rank 1 got SIGTERM and ignores it
        assert not job.done()
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job
    finally:
        if not job.done():
            job.cancel()
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    pytest.fail(f"rank 1 (pid {pid}) was still running after run_processes returned")
