"""Every example runs and exits 0. An example says how to run it on a line ``# run: COMMAND``."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def command_of(path: Path) -> list[str]:
    match = re.search(r"^# run: (.+)$", path.read_text(), re.M)
    if not match:
        raise AssertionError(f"{path.name} has no '# run: COMMAND' line")
    argv = shlex.split(match.group(1))
    if argv[0] == "python":
        argv[0] = sys.executable
    elif argv[0] == "afmi":
        argv[:1] = [sys.executable, "-m", "afmi"]
    return argv


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(path, subprocess_env):
    proc = subprocess.run(
        command_of(path),
        cwd=ROOT,
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"{path.name} failed:\n{proc.stdout}\n{proc.stderr}"
    assert proc.stdout.strip(), f"{path.name} printed nothing"


def test_demo_main_job_matches_sequential(afmi_cli):
    proc = afmi_cli("demo", "-n", "5", "--samples", "20000", "--epochs", "4", cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "matches sequential k-means: yes" in proc.stdout
    assert proc.stdout.count("epoch ") == 4 + 1  # progress lines + the summary's "median epoch"
    # one line per epoch, in order, printed once for the job (not once per rank)
    assert re.findall(r"^epoch +(\d+)/4 ", proc.stdout, re.M) == ["1", "2", "3", "4"]


def test_demo_times_the_jobs_epochs_once_each_and_starts_from_the_first_rows():
    import argparse

    import numpy as np

    import afmi
    from afmi.cli import demo

    args = argparse.Namespace(samples=9000, features=3, clusters=4, seed=1, epochs=3)
    # the start rows are the data set's first rows, made without the rest of it
    whole = demo.make_shard(9000, 3, 4, 1, 0, 1)
    assert np.array_equal(demo.make_rows(9000, 3, 4, 1, 0, 4), whole[:4])
    assert np.array_equal(demo.make_rows(9000, 3, 4, 1, 4095, 4100), whole[4095:4100])
    clock = demo.EpochClock(args.epochs, quiet=True)
    results = afmi.run_local(demo.kmeans_rank, 3, args, clock)
    assert len(clock.seconds) == args.epochs and all(t > 0 for t in clock.seconds)
    assert clock.start > 0
    for r in results[1:]:
        assert np.array_equal(r["centroids"], results[0]["centroids"])
