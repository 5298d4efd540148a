"""Selection: hints, determinism across processes, ties, explanations, the CLI."""

import json
import os
import subprocess
import sys

import pytest

from afmi.config import Config
from afmi.errors import ArgumentError
from afmi.model import Hint, as_hint, choose, explain, predict_all

ALL = ["local", "direct", "redis", "s3"]


def test_fast_picks_the_least_time_and_cheap_the_least_dollars():
    preds = predict_all("allreduce", 1 << 20, 16, ["direct", "redis", "s3"])
    fast = choose("allreduce", 1 << 20, 16, ["direct", "redis", "s3"], hint="fast")
    cheap = choose("allreduce", 1 << 20, 16, ["direct", "redis", "s3"], hint="cheap")
    assert fast.time_s == min(p.time_s for p in preds)
    assert cheap.usd == min(p.usd for p in preds)


def test_cheap_can_differ_from_fast():
    # Make direct the fastest but expensive (a pricey rendezvous VM per request).
    cfg = Config.from_dict(
        {"model": {"direct": {"infrastructure_usd_per_hour": 1e4, "requests_per_hour": 1}}}
    )
    fast = choose("send", 1000, 2, ["direct", "redis"], cfg, "fast")
    cheap = choose("send", 1000, 2, ["direct", "redis"], cfg, "cheap")
    assert (fast.channel, cheap.channel) == ("direct", "redis")


def test_weighted_hint_moves_between_cheap_and_fast():
    cfg = Config.from_dict(
        {"model": {"direct": {"infrastructure_usd_per_hour": 1e4, "requests_per_hour": 1}}}
    )
    assert choose("send", 1000, 2, ["direct", "redis"], cfg, 0.0).channel == "redis"
    assert choose("send", 1000, 2, ["direct", "redis"], cfg, 1e9).channel == "direct"
    assert as_hint("weighted", cfg) == Hint("weighted", cfg.model.usd_per_s)
    assert as_hint(None, Config(hint="cheap")) == Hint("cheap")


@pytest.mark.parametrize("bad", ["quick", -1.0, float("nan"), True])
def test_bad_hint_is_a_clear_error(bad):
    with pytest.raises(ArgumentError, match="hint"):
        as_hint(bad)


def test_ties_go_to_the_channel_name():
    cfg = Config.from_dict({"model": {"redis": DEFAULT_DIRECT_AS_DICT, "direct": {}}})
    p = choose("send", 100, 2, ["redis", "direct"], cfg, "fast")
    assert p.channel == "direct"  # equal models: alphabetical
    p = choose("send", 100, 2, ["direct", "redis"], cfg, "fast")
    assert p.channel == "direct"


def _direct_dict():
    from afmi.model import DEFAULTS

    return DEFAULTS["direct"].to_dict()


DEFAULT_DIRECT_AS_DICT = _direct_dict()


def test_unknown_operation_is_a_clear_error():
    with pytest.raises(ArgumentError, match="unknown operation 'allreduc'"):
        choose("allreduce"[:-1], 8, 4, ["local"])


def test_explanation_table_marks_the_winner():
    exp = explain("allreduce", 4096, 8, ALL, hint="fast")
    text = str(exp)
    assert "allreduce of 4 KiB on 8 ranks, hint fast" in text
    for ch in ALL:
        assert ch in text
    marked = [line for line in text.splitlines() if line.startswith("*  ")]
    assert len(marked) == 1 and exp.winner.channel in marked[0]
    assert exp.to_dict()["winner"]["channel"] == exp.winner.channel
    from afmi.model import candidates

    assert len(exp.rows) == sum(len(candidates("allreduce", c, 8, 4096)) for c in ALL)


_CHILD = """
import json, sys
from afmi.config import Config
from afmi.model import choose
cfg = Config.from_dict({"model": {
    "local": {"bandwidth_single_bytes_per_s": 1e6, "bandwidth_aggregate_bytes_per_s": 1e6},
    "s3": {"bandwidth_single_bytes_per_s": 1e9, "bandwidth_aggregate_bytes_per_s": 1e12},
}})
out = []
for op in ["send", "bcast", "allreduce", "gather", "barrier"]:
    for nbytes in [1, 1000, 10**6, 10**8]:
        for size in [2, 5, 64]:
            for hint in ["fast", "cheap", 0.01]:
                p = choose(op, nbytes, size, sys.argv[1].split(","), cfg, hint=hint)
                out.append([op, nbytes, size, str(hint), p.channel, p.algorithm])
print(json.dumps(out))
"""


def test_every_process_reaches_the_same_choice(subprocess_env):
    """Ranks in separate processes (different hash seeds, channel order) agree without talking."""
    outputs = []
    for seed, order in (("1", "s3,redis,direct,local"), ("2", "local,direct,redis,s3")):
        env = dict(subprocess_env, PYTHONHASHSEED=seed)
        res = subprocess.run(
            [sys.executable, "-c", _CHILD, order],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        outputs.append(json.loads(res.stdout))
    assert outputs[0] == outputs[1]
    channels = {row[4] for row in outputs[0]}
    assert len(channels) >= 3  # the sweep really exercises different choices


def test_explain_cli_table_and_json(afmi_cli):
    cmd = ["explain", "allreduce", "1MiB", "--size", "8"]
    res = afmi_cli(*cmd, "--hint", "cheap")
    assert res.returncode == 0, res.stderr
    assert "allreduce of 1 MiB on 8 ranks, hint cheap" in res.stdout
    assert "* chosen:" in res.stdout
    res = afmi_cli(*cmd, "--json", "--channels", "redis,s3")
    data = json.loads(res.stdout)
    assert {r["channel"] for r in data["rows"]} == {"redis", "s3"}
    assert data["size"] == 8 and data["nbytes"] == 1 << 20


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["allreduc", "8"], "unknown operation"),
        (["allreduce", "8x"], "NBYTES must be"),
        (["allreduce", "8", "--channels", "carrier-pigeon"], "unknown channel"),
        (["allreduce", "8", "--size", "0"], "--size"),
        (["allreduce", "8", "--hint", "soon"], "hint must be"),
    ],
)
def test_explain_cli_bad_input(afmi_cli, args, message):
    res = afmi_cli("explain", *args)
    assert res.returncode == 2
    assert message in res.stderr
    assert "Traceback" not in res.stderr


def test_explain_cli_reads_a_model_file(afmi_cli, subprocess_env, tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"model": {"s3": {"latency_s": 1e-9, "poll_interval_s": 0.0}}}))
    env = dict(subprocess_env)
    env.pop("AFMI_CONFIG", None)
    res = afmi_cli("explain", "send", "1", "--config", str(path), env=env)
    assert "* chosen: s3 / p2p" in res.stdout, res.stdout + res.stderr
    assert os.path.exists(path)


def test_every_registered_collective_can_be_explained():
    from afmi.collectives.registry import algorithms
    from afmi.model.cli import explain_offline

    ops = [*sorted({a.collective for a in algorithms()}), "send"]
    assert {"allreduce", "bcast", "barrier", "gather"} <= set(ops)
    for op in ops:
        for size in (1, 2, 5, 16):
            exp = explain_offline(op, 4096, size, ALL, Config(), "cheap")
            assert exp.winner in exp.rows
            assert all(r.time_s >= 0 and r.usd >= 0 for r in exp.rows)


def test_explain_marks_the_rows_that_were_not_options():
    import dataclasses

    from afmi.model.cli import algorithm_for, explain_offline

    exp = explain_offline("allreduce", 1 << 20, 16, ALL, Config(), "cheap")
    registry = {(c, algorithm_for("allreduce", c, 16, 1 << 20).name) for c in ALL}
    options = [r for r in exp.rows if exp.could_run(r)]
    assert {(r.channel, r.algorithm) for r in options} == registry
    assert len(options) < len(exp.rows)  # other algorithms are shown, but marked
    hint = as_hint("cheap")
    assert exp.winner is min(options, key=hint.key)  # the cheapest option, not the cheapest row
    lines = str(exp).splitlines()
    for r in exp.rows:
        line = next(ln for ln in lines if ln[3:].split()[:2] == [r.channel, r.algorithm])
        assert line.startswith("*" if r is exp.winner else " " if exp.could_run(r) else "-")
    assert "- not an option: the registry runs another algorithm" in str(exp)
    rows = exp.to_dict()["rows"]
    assert sum(r["option"] for r in rows) == len(registry)

    config = Config()
    config = dataclasses.replace(
        config, model=dataclasses.replace(config.model, choose_algorithm=True)
    )
    free = explain_offline("allreduce", 1 << 20, 16, ALL, config, "cheap")
    assert all(free.could_run(r) for r in free.rows) and "not an option" not in str(free)
    assert free.winner is min(free.rows, key=hint.key)
