"""``python -m afmi.bench.storage_collectives``: every algorithm of a collective side by side."""

import subprocess
import sys


def test_the_tool_times_every_algorithm_of_the_chosen_collectives(redis_url, subprocess_env):
    env = {**subprocess_env, "AFMI_TEST_REDIS_URL": redis_url}
    cmd = [sys.executable, "-m", "afmi.bench.storage_collectives"]
    cmd += ["--sizes", "64", "--ranks", "3", "--repeat", "1", "--ops", "gather,scan"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=True)
    lines = out.stdout.splitlines()
    assert len(lines) == 2
    assert "gather: linear" in lines[0] and "| binomial" in lines[0]
    assert "scan: linear" in lines[1] and "| recursive_doubling" in lines[1]
    assert all("(1.00x)" in line for line in lines)  # the fastest of each row


def test_the_tool_names_the_collectives_it_knows(subprocess_env):
    cmd = [sys.executable, "-m", "afmi.bench.storage_collectives", "--ops", "gather,allsum"]
    out = subprocess.run(cmd, env=subprocess_env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "unknown collectives ['allsum']" in out.stderr and "reduce_scatter" in out.stderr
