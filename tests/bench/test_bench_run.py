"""A tiny real `afmi bench --quick` run on the local channel, anchors, plots, the loader hook."""

import json
import subprocess
import sys

import pytest

from afmi.bench import anchors, measure
from afmi.config import Config

TINY = [
    "--quick",
    "--channels",
    "local",
    "--ranks",
    "2",
    "--ops",
    "barrier,allreduce",
    "--max-size",
    "4KiB",
    "--collective-max-size",
    "4KiB",
    "--seconds-per-point",
    "0.04",
    "--passes",
    "2",
]


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    import os
    from pathlib import Path

    tmp = tmp_path_factory.mktemp("bench")
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "afmi",
            "bench",
            *TINY,
            "--json",
            str(tmp / "out.json"),
            "--calibrate",
            str(tmp / "model.json"),
            "--no-anchors",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=170,
        cwd=tmp,
    )
    return res, tmp


def test_quick_run_writes_json(bench_run):
    res, tmp = bench_run
    assert res.returncode == 0, res.stderr
    data = json.loads((tmp / "out.json").read_text())
    assert data["channels"] == ["local"]
    assert data["quick"] is True
    # the loop the ranks ran on (uvloop when installed), here as in the model file
    from afmi.launch import event_loop_name

    assert data["event_loop"] == event_loop_name()
    model = json.loads((tmp / "model.json").read_text())["model"]
    assert f"({event_loop_name()} event loop)" in model["calibrated"]
    assert [r["nbytes"] for r in data["pingpong"]] == [1, 16, 256, 4096]
    assert data["passes"] == 2
    assert set(data["accuracy"]["pass_spread_by_channel"]) == {"local"}
    for r in data["pingpong"]:
        assert r["channel"] == "local"
        assert r["latency_s"] > 0 and r["bandwidth_bytes_per_s"] > 0 and r["iterations"] >= 2
        assert r["predicted_s"] > 0
    for r in data["pingpong"] + data["collectives"]:
        # two passes measured every point; it keeps the faster of two passes of
        # several calls each, or the upper of the two when a pass timed fewer
        assert len(r["pass_latencies_s"]) == 2
        keep = min if r["pass_estimate"] == "fastest" else max
        assert r["latency_s"] == keep(r["pass_latencies_s"])
        # how fast the machine ran while each pass was measured, the kept pass's with it
        assert len(r["pass_machine_slowdown"]) == 2 and min(r["pass_machine_slowdown"]) >= 1.0
        kept = r["pass_latencies_s"].index(r["latency_s"])
        assert r["machine_slowdown"] == r["pass_machine_slowdown"][kept]
    ops = {(r["op"], r["ranks"]) for r in data["collectives"]}
    assert ops == {("barrier", 2), ("allreduce", 2)}
    assert all(r["latency_s"] > 0 and r["algorithm"] for r in data["collectives"])
    acc = data["accuracy"]
    assert acc["points"] == len(data["pingpong"]) + len(data["collectives"])
    assert 0 <= acc["within_tolerance"] <= acc["points"]
    assert acc["choice_points"] == 0 and "one channel" in acc["choice_note"]
    assert "calibrated in this run" in data["model_source"]
    # every other ping-pong size, from the largest, is fitted, the rest held out; the
    # collectives here have fewer than 4 sizes per operation, so all of them are fitted
    assert [r.get("fitted", False) for r in data["pingpong"]] == [False, True, False, True]
    assert all(r.get("fitted") for r in data["collectives"])
    held = [r for r in data["pingpong"] + data["collectives"] if not r.get("fitted")]
    assert acc["held_out_points"] == len(held) == 2
    assert acc["within_by_channel"]["local"][1] == acc["points"]
    params = data["calibration"]["channels"]["local"]
    assert params["parallel_ranks"] == 1.0  # every rank of the bench shares one loop
    assert params["reduce_bytes_per_s"] == data["calibration"]["reduce_bytes_per_s"] > 0
    # the reduction is timed in each of the two passes (the fastest is kept)
    assert "pass 1/2: the reduction" in res.stderr and "pass 2/2: the reduction" in res.stderr


def test_calibration_sizes_stay_off_the_sweep():
    from afmi.bench.suite import calibration_sizes

    assert calibration_sizes(1 << 20) == [2, 2048, 1 << 19]
    assert calibration_sizes(1 << 18) == [2, 2048, 1 << 17]
    assert calibration_sizes(4096) == [2, 2048]
    sweep = set(measure.sizes(1 << 20)[::2])
    assert not sweep & set(calibration_sizes(1 << 20))


def test_quick_run_prints_tables_and_progress(bench_run):
    res, _ = bench_run
    assert "Ping-pong (half round trip" in res.stdout
    assert "Collective latency" in res.stdout
    assert "Model accuracy" in res.stdout
    # the worst point in words, with both times, not a raw dict
    worst = next(line for line in res.stdout.splitlines() if "; worst " in line)
    assert " local " in worst and "measured " in worst and ", model " in worst
    assert "{" not in worst
    assert "measurement noise: a point's passes lay apart" in res.stdout  # two passes
    assert "machine speed: " in res.stdout  # every point watched the CPU's speed
    assert "ping-pong local" in res.stderr  # progress goes to stderr
    assert "skipped" not in res.stdout  # only local was asked for


def test_calibration_file_loads_in_config(bench_run):
    _, tmp = bench_run
    from afmi.model import channel_models

    cfg = Config.from_dict({"model": {"file": str(tmp / "model.json")}})
    local = channel_models(cfg)["local"]
    assert local.latency_s > 0 and local.bandwidth_single_bytes_per_s > 0
    assert local != channel_models(Config())["local"]


def test_plots_are_png(bench_run, tmp_path):
    pytest.importorskip("matplotlib")
    from afmi.bench.report import write_plots

    _, tmp = bench_run
    data = json.loads((tmp / "out.json").read_text())
    paths = write_plots(data, tmp_path)
    assert {p.name for p in paths} == {
        "pingpong_latency.png",
        "pingpong_bandwidth.png",
        "collectives_latency.png",
    }
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_socket_anchor_measures_and_cleans_up():
    # sizes that leave the stream off a 64-byte boundary: each next size realigns it
    sizes = [1, 100, 1024, 3, 65536]
    rows = anchors.socket_pingpong(sizes, measure.Budget(5, 5, 1, 1, 0.05, 2))
    assert [r["nbytes"] for r in rows] == sizes
    assert all(r["latency_s"] > 0 and r["channel"] == "socket" for r in rows)


def test_the_direct_ping_pong_tools_socket_rows_realign_between_sizes():
    from afmi.channels.direct import pingpong

    sizes = [1, 8, 100, 65536]
    result = pingpong._socket_pair(sizes, quick=True)
    assert sorted(result) == sizes and all(t > 0 for t in result.values())


def test_mpi4py_anchor_runs_or_says_why_not():
    reason = anchors.mpi4py_unavailable()
    if reason is not None:
        assert "mpi" in reason.lower()
        with pytest.raises(RuntimeError, match="mpi"):
            anchors.mpi4py_pingpong([1])
        return
    rows = anchors.mpi4py_pingpong([1, 1024], measure.Budget(5, 5, 1, 1, 0.05, 2), timeout=120)
    assert [r["nbytes"] for r in rows] == [1, 1024]
    assert all(r["latency_s"] > 0 for r in rows)


def test_sizes_and_budget():
    assert measure.sizes(1 << 24) == [1 << e for e in range(25)]
    assert measure.sizes(1 << 20, quick=True) == [1, 16, 256, 4096, 65536, 1 << 20]
    b = measure.Budget()
    assert b.plan(8192) == (100, 1000) and b.plan(8193) == (10, 100)
    assert b.cap(1000, 0.01) == 100 and b.cap(1000, 10.0) == b.min_iters


def test_s3_points_get_a_larger_budget():
    from afmi.bench.measure import BUDGET_SCALE
    from afmi.bench.procs import ProcsOptions
    from afmi.bench.suite import Options

    opts = Options()
    assert opts.budget("s3").seconds_per_point == pytest.approx(
        opts.budget().seconds_per_point * BUDGET_SCALE["s3"]
    )
    assert opts.budget("direct") == opts.budget()
    assert opts.pass_budget("s3").seconds_per_point == pytest.approx(
        opts.budget("s3").seconds_per_point / opts.pass_count()
    )
    mine = Options(seconds_per_point=2.0)
    assert mine.budget("s3").seconds_per_point == pytest.approx(2.0 * BUDGET_SCALE["s3"])
    quick = Options(quick=True)
    assert quick.budget("s3") == quick.budget()  # a smoke run stays quick
    procs = ProcsOptions()  # across processes alike
    assert procs.budget("s3").seconds_per_point == pytest.approx(
        procs.budget().seconds_per_point * BUDGET_SCALE["s3"]
    )


def test_passes_share_the_budget_and_merge_to_the_fastest_or_the_median():
    from afmi.bench.suite import Options, merge_passes
    from afmi.errors import ArgumentError

    assert Options().pass_count() == 3 and Options(quick=True).pass_count() == 1
    one, three = Options(passes=1).pass_budget(), Options(passes=3).pass_budget()
    assert three.seconds_per_point == pytest.approx(one.seconds_per_point / 3)
    assert three.iters_small == one.iters_small // 3 and three.min_iters == 1
    with pytest.raises(ArgumentError, match="passes must be at least 1"):
        Options(passes=0).pass_count()
    rows = [
        {
            "channel": "local",
            "nbytes": 100,
            "iterations": 4,
            "latency_s": t,
            "bandwidth_bytes_per_s": 0.0,
        }
        for t in (3e-6, 1e-6, 2e-6)
    ]
    point = merge_passes(rows)
    # every pass timed 4 calls (a median each): the fastest pass is the point
    assert point["latency_s"] == 1e-6 and point["iterations"] == 12
    assert point["pass_estimate"] == "fastest"
    assert point["pass_latencies_s"] == [3e-6, 1e-6, 2e-6]
    assert point["bandwidth_bytes_per_s"] == pytest.approx(100 / 1e-6)
    # one pass timed a single call: a lucky draw, so the median of the passes
    rows[1]["iterations"] = 1
    point = merge_passes(rows)
    assert point["latency_s"] == 2e-6 and point["pass_estimate"] == "median"
    assert point["iterations"] == 9
    # a channel whose calls start at random phases of its poller: always the median
    rows[1]["iterations"] = 4
    assert merge_passes(rows)["pass_estimate"] == "fastest"
    point = merge_passes(rows, fastest=False)
    assert point["latency_s"] == 2e-6 and point["pass_estimate"] == "median"
    # late calls add up over the passes
    late = [dict(r, late_calls=n) for r, n in zip(rows, (0, 2, 1))]
    assert merge_passes(late)["late_calls"] == 3
    # the machine's speed while the kept pass was measured goes with it
    watched = [dict(r, machine_slowdown=s) for r, s in zip(rows, (1.5, 1.1, 1.3))]
    point = merge_passes(watched)
    assert point["machine_slowdown"] == 1.1
    assert point["pass_machine_slowdown"] == [1.5, 1.1, 1.3]
    assert merge_passes(watched, fastest=False)["machine_slowdown"] == 1.3


def test_bench_rejects_bad_passes(subprocess_env):
    res = subprocess.run(
        [sys.executable, "-m", "afmi", "bench", "--channels", "local", "--passes", "0"],
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2 and "passes must be at least 1" in res.stderr


def test_bench_refuses_a_run_that_measures_nothing(subprocess_env):
    # it used to print nothing and exit 0
    flags = ["--no-pingpong", "--no-collectives", "--no-anchors"]
    res = subprocess.run(
        [sys.executable, "-m", "afmi", "bench", "--channels", "local", *flags],
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2 and "nothing to measure" in res.stderr


def test_bench_rejects_unknown_channels(subprocess_env):
    res = subprocess.run(
        [sys.executable, "-m", "afmi", "bench", "--channels", "pigeon"],
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2 and "not 'pigeon'" in res.stderr


def test_bench_loader_hook(subprocess_env):
    try:
        import afmi.bench.loader  # noqa: F401
    except ModuleNotFoundError:
        res = subprocess.run(
            [sys.executable, "-m", "afmi", "bench", "loader"],
            env=subprocess_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 2 and "not part of this build" in res.stderr
    else:
        res = subprocess.run(
            [sys.executable, "-m", "afmi", "bench", "loader", "--help"],
            env=subprocess_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 0


def test_the_calibrated_lines_say_every_fitted_cost():
    from afmi.bench.report import _calibrated_lines

    s3 = {
        "latency_s": 20e-3,
        "fetch_s": 12e-3,
        "inline_max_bytes": 256.0,
        "first_round_saving_s": 4e-3,
        "later_round_s": 9e-3,
        "bandwidth_single_bytes_per_s": 1e8,
        "cpu_per_wait_s": 3e-3,
        "cpu_per_fetch_s": 5e-3,
        "poll_request_s": 7e-3,
        "parallel_ranks": 1.0,
    }
    direct = {
        "latency_s": 60e-6,
        "bandwidth_single_bytes_per_s": 6e9,
        "large_message_bytes": 512 << 10,
        "bandwidth_large_bytes_per_s": 3.5e9,
        "huge_message_bytes": 16 << 20,
        "bandwidth_huge_bytes_per_s": 2.4e9,
        "cpu_per_message_s": 16e-6,
        "cpu_per_payload_message_s": 14e-6,
        "parallel_ranks": 1.5,
        "shared_cpus": 2.0,
        "crowding": 0.75,
    }
    s3_line, direct_line = _calibrated_lines({"channels": {"s3": s3, "direct": direct}})
    assert direct_line.endswith("parallel ranks 1.5, crowding 0.75 beyond 2 CPUs")
    assert s3_line.endswith("parallel ranks 1")  # no crowding fitted: none said
    assert "+12.00 ms to fetch a message over 256 B" in s3_line
    assert "-4.00 ms a call's first round, +9.00 ms every round after it" in s3_line
    assert "a poll takes 7.00 ms" in s3_line
    assert "+ 3.00 ms per wait for messages" in s3_line
    assert "+ 5.00 ms per fetch" in s3_line
    assert "100 MB/s single stream," in s3_line  # one rate: nothing beyond
    assert "round" not in direct_line and "wait" not in direct_line
    assert "poll" not in direct_line
    assert "fetch" not in direct_line
    assert "CPU per message 16.0 us + 0.0 us per further rank + 14.0 us with the data" in (
        direct_line
    )
    assert "with the data" not in s3_line
    assert "TCP segment" not in direct_line  # no such cost fitted: none said
    split = {**direct, "split_message_bytes": 65419.0, "cpu_per_split_message_s": 55e-6}
    (split_line,) = _calibrated_lines({"channels": {"direct": split}})
    assert "+ 55.0 us per message over 65419 B (more than one TCP segment)" in split_line
    assert "for a message over" not in split_line  # no step on the wire fitted: none said
    split["split_latency_s"] = 13e-6
    (split_line,) = _calibrated_lines({"channels": {"direct": split}})
    assert "latency 60.0 us (+13.0 us for a message over 65419 B: more than one TCP segment)" in (
        split_line
    )
    assert "6000 MB/s single stream (3500 MB/s beyond 512 KiB, 2400 MB/s beyond 16 MiB)" in (
        direct_line
    )


async def test_the_bench_allreduce_writes_into_one_reused_result():
    # a fresh result per call can land on memory the machine never touched: the bench
    # times allreduce into one array per point, as a training loop should
    import numpy as np

    import afmi

    async def main(comm):
        buf = np.full(4, comm.rank + 1, dtype=np.uint8)
        result = np.zeros_like(buf)
        returned = await measure.COLLECTIVES["allreduce"](comm, buf, result)
        return returned is result, result.tolist()

    out = await afmi.launch_local(main, 3)
    assert out == [(True, [6, 6, 6, 6])] * 3


def test_the_channels_of_one_point_are_measured_one_after_the_other():
    # the fast choice compares them: they must meet the same state of the machine
    from afmi.bench import suite

    said: list[str] = []
    opts = suite.Options(
        channels=["local", "direct"],
        quick=True,
        ranks=[2],
        ops=["barrier", "bcast"],
        seconds_per_point=0.02,
        passes=1,
    )
    swept = suite._sweep(opts, ["local", "direct"], Config(), [1, 64], [8], [2], {}, said.append)
    assert swept.channels == ["local", "direct"]
    assert said == [
        "ping-pong local 1 B",
        "ping-pong direct 1 B",
        "ping-pong local 64 B",
        "ping-pong direct 64 B",
        "barrier local 2 ranks",
        "barrier direct 2 ranks",
        "bcast local 2 ranks",
        "bcast direct 2 ranks",
    ]
    assert {(r["channel"], r["op"]) for r in swept.collectives} == {
        (ch, op) for ch in ("local", "direct") for op in ("barrier", "bcast")
    }
