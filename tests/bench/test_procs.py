"""The cross-process bench (`afmi bench --processes`): real rank processes, real anchors."""

import importlib.util
import json

import numpy as np
import pytest

import afmi
from afmi.bench import calibrate, procs
from afmi.bench.measure import Budget
from afmi.config import Config
from afmi.errors import ArgumentError
from afmi.model import channel_models

TINY = [
    "--processes",
    "--quick",
    "--channels",
    "direct",
    "--ranks",
    "2",
    "--max-size",
    "4KiB",
    "--collective-max-size",
    "4KiB",
    "--seconds-per-point",
    "0.02",
]
BUDGET = Budget(20, 5, 3, 2, 0.02, 2)

# With no mpiexec on PATH the skip reason names it, unless mpi4py itself is missing.
MISSING_MPI = "mpiexec" if importlib.util.find_spec("mpi4py") else "mpi4py is not installed"


def _tiny_bench(afmi_cli, extra, env, cwd):
    """``afmi bench`` with :data:`TINY` and ``extra``; it must succeed."""
    res = afmi_cli("bench", *TINY, *extra, env=env, cwd=cwd, timeout=120)
    assert res.returncode == 0, res.stderr
    return res


def test_cli_run_writes_json_and_skips_mpi_without_mpiexec(tmp_path, afmi_cli, subprocess_env):
    """A tiny run over direct; with no mpiexec on PATH the mpi4py anchor says why it is skipped."""
    env = dict(subprocess_env, PATH=str(tmp_path))  # nothing to find there: no mpiexec
    out = tmp_path / "out.json"
    res = _tiny_bench(afmi_cli, ["--json", str(out), "--plots", "plots"], env, tmp_path)
    assert "Ping-pong between 2 processes" in res.stdout
    # without mpi4py there is no back-to-back allreduce: nothing to set it beside
    assert "Allreduce of float64" not in res.stdout
    assert "Collectives, one process per rank" in res.stdout
    whole = json.loads(out.read_text())
    from afmi.launch import event_loop_name

    assert whole["event_loop"] == event_loop_name()  # the rank processes' loop
    data = whole["processes"]
    assert data["channels"] == ["direct"]
    assert MISSING_MPI in data["skipped"]["mpi4py"]
    pp = [r for r in data["pingpong"] if r["channel"] == "direct"]
    assert [r["nbytes"] for r in pp] == data["pingpong_sizes"] == [1, 16, 256, 4096]
    assert all(r["latency_s"] > 0 and r["iterations"] >= 2 for r in pp)
    assert {r["nbytes"] for r in data["pingpong"] if r["channel"] == "socket"} == {1, 16, 256, 4096}
    assert data["allreduce"] == [] and data["allreduce_sizes"] == []
    vs_socket = [r["vs_socket"] for r in data["ratios"] if r["op"] == "pingpong"]
    assert len(vs_socket) == 4 and all(v > 0 for v in vs_socket)
    assert not any("vs_mpi4py" in r for r in data["ratios"])
    # the collectives of the default --ops, timed from one start instant to the last rank out
    other = [(r["op"], r["ranks"], r["nbytes"]) for r in data["collectives"]]
    assert other == [("allreduce", 2, 8), ("barrier", 2, 0), ("bcast", 2, 8), ("gather", 2, 8)]
    assert all(r["latency_s"] > 0 and r["predicted_s"] > 0 for r in data["collectives"])
    assert all(0 <= r["late_calls"] <= r["iterations"] for r in data["collectives"])
    assert data["accuracy"]["points"] == 4 + 4
    # every afmi point says how fast the CPUs of its rank processes ran meanwhile
    assert all(r["machine_slowdown"] >= 1.0 for r in pp + data["collectives"])
    assert data["accuracy"]["at_speed_points"] <= data["accuracy"]["points"]
    assert "machine speed: " in res.stdout
    # --plots draws the cross-process run too: its ping-pong beside the socket anchor
    # and its collectives (no back-to-back allreduce without mpi4py)
    plots = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert plots == ["collectives_latency.png", "pingpong_bandwidth.png", "pingpong_latency.png"]
    assert all((tmp_path / "plots" / p).read_bytes()[:4] == b"\x89PNG" for p in plots)


@pytest.mark.skipif(procs.mpi4py_unavailable() is not None, reason="mpi4py/mpiexec missing")
def test_run_procs_with_mpi4py_anchor(tmp_path):
    opts = procs.ProcsOptions(
        channels=["direct"], ranks=[2], max_bytes=64, allreduce_max_bytes=8, quick=True
    )
    opts.seconds_per_point = 0.02
    result = procs.run_procs(opts, start_servers=False)
    assert "mpi4py" not in result["skipped"], result["skipped"]
    mpi = [r for r in result["allreduce"] if r["channel"] == "mpi4py"]
    assert [(r["ranks"], r["nbytes"]) for r in mpi] == [(2, 8)]
    direct = next(r for r in result["allreduce"] if r["channel"] == "direct")
    assert mpi[0]["iterations"] == direct["iterations"]  # same iteration counts as afmi
    ratio = next(r for r in result["ratios"] if r["op"] == "allreduce")
    assert ratio["vs_mpi4py"] == pytest.approx(direct["latency_s"] / mpi[0]["latency_s"])
    assert {r["nbytes"] for r in result["pingpong"] if r["channel"] == "mpi4py"} == {1, 16}
    # the plots set the back-to-back allreduce beside mpi4py's
    from afmi.bench.report import write_plots

    names = {p.name for p in write_plots(result, tmp_path)}
    assert "allreduce_vs_anchor.png" in names


def test_mpi4py_job_reports_missing_mpiexec(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert MISSING_MPI in (procs.mpi4py_unavailable() or "")
    with pytest.raises(RuntimeError, match=MISSING_MPI):
        procs.mpi4py_job(2, [], [(8, 1, 2)])


def test_afmi_job_with_four_ranks_has_no_pingpong():
    data = procs.afmi_job("direct", 4, [], [8, 4096], BUDGET)
    assert data["pingpong"] == []
    assert [row[0] for row in data["allreduce"]] == [8, 4096]
    assert all(row[1] >= 2 and row[2] > 0 for row in data["allreduce"])


def test_afmi_job_times_the_other_collectives():
    data = procs.afmi_job("direct", 3, [], [], BUDGET, collectives={"barrier": [0], "gather": [64]})
    assert data["allreduce"] == []
    assert [row[0] for row in data["collectives"]["barrier"]] == [0]
    assert [row[0] for row in data["collectives"]["gather"]] == [64]
    assert all(row[1] >= 1 and row[2] > 0 for rows in data["collectives"].values() for row in rows)


def test_failing_rank_is_reported():
    from afmi.config import Config
    from afmi.testing.servers import free_port

    data = Config().to_dict()
    data["channels"]["redis"]["url"] = f"redis://127.0.0.1:{free_port()}"  # nobody listens
    with pytest.raises(RuntimeError, match="redis job on 2 processes failed"):
        procs.afmi_job("redis", 2, [1], [8], BUDGET, Config.from_dict(data), timeout=60)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"channels": ["local"]}, "one process"),
        ({"ranks": [1, 2]}, "--ranks"),
        ({"repeat": 0}, "--repeat"),
        ({"ops": ["scan"]}, "--ops: the bench times barrier"),
    ],
)
def test_bad_options_say_what_to_change(kwargs, message):
    with pytest.raises(ArgumentError, match=message):
        procs.run_procs(procs.ProcsOptions(**kwargs), start_servers=False)


@pytest.mark.parametrize("flag", ["--no-pingpong", "--no-collectives"])
def test_cli_skips_what_it_is_told_to_skip(flag, afmi_cli, subprocess_env, tmp_path):
    # both flags used to be ignored with --processes: the whole sweep ran anyway
    out = tmp_path / "out.json"
    _tiny_bench(afmi_cli, ["--no-anchors", flag, "--json", str(out)], subprocess_env, tmp_path)
    data = json.loads(out.read_text())["processes"]
    if flag == "--no-pingpong":
        assert data["pingpong"] == [] and data["pingpong_sizes"] == []
        assert {r["op"] for r in data["collectives"]} == {"barrier", "bcast", "allreduce", "gather"}
    else:
        assert data["collectives"] == [] and data["allreduce"] == []
        assert [r["nbytes"] for r in data["pingpong"]] == data["pingpong_sizes"] != []


def test_nothing_to_measure_is_refused():
    opts = procs.ProcsOptions(pingpong=False, ops=[])
    with pytest.raises(ArgumentError, match="nothing to measure: --no-pingpong and"):
        procs.run_procs(opts, start_servers=False)


def test_a_pingpong_without_two_ranks_is_refused():
    opts = procs.ProcsOptions(ops=[], ranks=[4, 8])
    with pytest.raises(ArgumentError, match="has no 2; add 2 to --ranks"):
        procs.run_procs(opts, start_servers=False)
    procs.ProcsOptions(ops=["barrier"], ranks=[4]).check()  # collectives alone measure


def test_cli_refuses_calibrate_without_two_ranks(afmi_cli, tmp_path):
    model = str(tmp_path / "m.json")
    res = afmi_cli("bench", "--processes", "--ranks", "4", "--calibrate", model, cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert "--calibrate fits" in res.stderr and "has no 2: add it" in res.stderr
    assert not (tmp_path / "m.json").exists()


def test_cli_rejects_local_channel(afmi_cli, tmp_path):
    res = afmi_cli("bench", "--processes", "--channels", "local", cwd=tmp_path)
    assert res.returncode == 2
    assert "local channel lives in one process" in res.stderr


def test_sizes():
    full = procs.ProcsOptions()
    assert full.pingpong_sizes()[0] == 1 and full.pingpong_sizes()[-1] == 64 << 20
    assert full.allreduce_sizes() == [8 << (2 * i) for i in range(11)] + [1 << 24]
    assert procs.ProcsOptions(quick=True).allreduce_sizes() == [8, 1 << 16, 1 << 20]
    quick = procs.ProcsOptions(quick=True).collective_sizes()
    assert quick == {
        "barrier": [0],
        "bcast": [8, 1 << 16, 1 << 20],
        "allreduce": [8, 1 << 16, 1 << 20],
        "gather": [8, 1 << 16, 1 << 20],
    }


def test_back_to_back_allreduce_only_beside_mpi4py(monkeypatch, tmp_path):
    # it is timed only to be set beside mpi4py's Allreduce: not without the anchor
    assert procs.ProcsOptions(anchors=False).back_to_back_sizes() == []
    assert procs.ProcsOptions(ops=["bcast"]).back_to_back_sizes() == []
    monkeypatch.setenv("PATH", str(tmp_path))  # no mpiexec
    assert procs.ProcsOptions().back_to_back_sizes() == []
    monkeypatch.setattr(procs, "mpi4py_unavailable", lambda: None)
    opts = procs.ProcsOptions(quick=True)
    assert opts.back_to_back_sizes() == opts.allreduce_sizes() == [8, 1 << 16, 1 << 20]


def test_best_of_n_and_ratios():
    a = [procs._pp_row("direct", 8, 10, 2e-5), procs._pp_row("socket", 8, 10, 1e-5)]
    b = [procs._pp_row("direct", 8, 10, 1e-5), procs._pp_row("socket", 8, 10, 3e-5)]
    best = procs._best(a, b)
    assert {r["channel"]: r["latency_s"] for r in best} == {"direct": 1e-5, "socket": 1e-5}
    # every run's time is kept, in run order, for the report's pass spread
    c = [procs._pp_row("direct", 8, 10, 4e-5)]
    thrice = procs._best(procs._best(procs._best([], a), b), c)
    passes = {r["channel"]: r["pass_latencies_s"] for r in thrice}
    assert passes == {"direct": [2e-5, 1e-5, 4e-5], "socket": [1e-5, 3e-5]}
    assert next(r for r in thrice if r["channel"] == "direct")["latency_s"] == 1e-5
    ar = [procs._coll_row("direct", 2, 8, 5, 4e-4), procs._coll_row("mpi4py", 2, 8, 5, 1e-4)]
    out = procs.ratios(best, ar)
    assert {(r["op"], r.get("vs_socket"), r.get("vs_mpi4py")) for r in out} == {
        ("pingpong", 1.0, None),
        ("allreduce", None, 4.0),
    }


async def test_two_rank_allreduce_rings_large_arrays_on_network_channels():
    import importlib

    from afmi.collectives import registry

    builtins = importlib.import_module("afmi.collectives.algorithms")
    from afmi.collectives.base import CollectiveContext

    big = np.zeros(builtins.RING_ALLREDUCE_PAIR_MIN_BYTES // 8)
    smaller = np.zeros(builtins.RING_ALLREDUCE_PAIR_MIN_BYTES // 16)

    async def main(comm):
        ctx = CollectiveContext(comm, 0, "test")
        return [
            registry.select("allreduce", ctx, {"x": x, "op": afmi.SUM}).name for x in (big, smaller)
        ]

    assert (
        await afmi.launch_local(main, 2, channel="direct") == [["ring", "recursive_doubling"]] * 2
    )
    assert (
        await afmi.launch_local(main, 2, channel="local")
        == [["recursive_doubling", "recursive_doubling"]] * 2
    )


def test_rank_main_usage(capsys):
    assert procs.rank_main(["nonsense"]) == 2
    assert "usage" in capsys.readouterr().err


def test_the_cross_process_calibration_finds_the_s3_fetch_step(tmp_path):
    # S3 across processes: messages up to ~400 B ride in the key (channels.s3.
    # key_payload_bytes), larger ones pay a GET
    def t(n):
        return 15e-3 + (7e-3 if n > 400 else 0.0) + n / 1e8

    sizes = [4**k for k in range(11)]  # 1 B ... 1 MiB
    result = {
        "pingpong": [procs._pp_row("s3", n, 5, t(n)) for n in sizes],
        "allreduce": [],
        "collectives": [
            procs._coll_row("s3", r, n, 3, 2 * r * t(n)) for r in (2, 4) for n in (8, 4096, 1 << 20)
        ],
    }
    out = procs.model_accuracy(result, Config(), str(tmp_path / "model.json"))
    s3 = out["calibration"]["channels"]["s3"]
    assert s3["fetch_s"] == pytest.approx(7e-3, rel=0.01)
    assert s3["inline_max_bytes"] == channel_models(Config())["s3"].inline_max_bytes == 400
    assert all(abs(r["rel_error"]) < 0.01 for r in result["pingpong"])


def test_the_cross_process_calibration_fits_the_first_call_past_the_split_limit(tmp_path):
    # a sweep of 8 B .. 8 MiB in x4 steps (--collective-max-size 8MiB): every other
    # size from the largest is fitted, which holds out 128 KiB, the first size whose
    # direct frames are longer than a TCP segment; in calls of more than two ranks it
    # is fitted too
    def t(n):
        return 5e-5 + n / 1e9

    sizes = [8 << (2 * i) for i in range(11)]
    result = {
        "pingpong": [procs._pp_row("direct", 4**k, 9, t(4**k)) for k in range(12)],
        "allreduce": [],
        "collectives": [
            procs._coll_row("direct", r, n, 9, r * t(n)) for r in (2, 4) for n in sizes
        ],
    }
    procs.model_accuracy(result, Config(), str(tmp_path / "model.json"))

    def fitted(ranks):
        rows = [r for r in result["collectives"] if r["ranks"] == ranks]
        return {r["nbytes"] for r in rows if r.get("fitted")}

    assert 1 << 17 not in fitted(2)
    if calibrate.split_params("direct"):  # the platform reports the segment size
        assert fitted(4) == fitted(2) | {1 << 17}


def test_the_model_is_compared_with_start_line_rows_only():
    # back-to-back allreduce rows overlap calls: they stay out of the fit and the accuracy
    def t(n):
        return 5e-5 + n / 1e9

    sizes = [4**k for k in range(8)]
    start_line = [procs._coll_row("direct", 2, n, 9, 2 * t(n)) for n in (8, 4096, 1 << 14)]
    back_to_back = [procs._coll_row("direct", 2, n, 9, t(n) / 10) for n in (8, 4096, 1 << 14)]
    result = {
        "pingpong": [procs._pp_row("direct", n, 9, t(n)) for n in sizes],
        "allreduce": back_to_back,
        "collectives": start_line,
    }
    out = procs.model_accuracy(result, Config())
    assert out["accuracy"]["points"] == len(sizes) + len(start_line)
    assert all("rel_error" not in r for r in back_to_back)
    assert all("rel_error" in r for r in start_line)
