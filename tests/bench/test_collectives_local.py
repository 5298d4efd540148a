"""The side-by-side comparison of one collective's algorithms on the local channel."""

from __future__ import annotations

import pytest

from afmi.bench import collectives_local


def test_every_algorithm_is_timed_and_checked(capsys):
    collectives_local.main(
        ["gather", "exscan", "--sizes", "8", "4096", "--ranks", "3", "--repeat", "1"]
    )
    out = capsys.readouterr().out
    assert "gather:" in out and "exscan:" in out
    for name in ("linear", "binomial", "recursive_doubling"):
        assert name in out
    rows = [line.split() for line in out.splitlines() if "ms (" in line]
    assert len(rows) == 4  # 2 collectives x 2 sizes on 3 ranks
    # every row has a fastest algorithm at 1.00x
    assert all("1.00x)" in " ".join(row) for row in rows)


def test_names_leave_out_algorithms_of_other_channels():
    assert "storage_publish" not in collectives_local.names_for("bcast")
    assert set(collectives_local.names_for("allreduce")) == {"linear", "recursive_doubling", "ring"}


def test_bad_arguments_say_what_to_change(capsys):
    with pytest.raises(SystemExit) as exc:
        collectives_local.main(["gather", "--repeat", "0"])
    assert exc.value.code == 2
    assert "--repeat" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        collectives_local.main(["no_such_collective"])


def test_a_local_step_is_timed_under_both_rule_sets(capsys):
    from afmi.bench import local_step

    # the network rules pick what the registry runs on direct
    assert local_step.network_choices(8) == {
        "allreduce": "ring",
        "reduce_scatter": "ring",
        "scan": "recursive_doubling",
        "gather": "binomial",
        "allgather": "bruck",
    }
    assert local_step.network_choices(8, "local")["allreduce"] == "linear"
    local_step.main(["--ranks", "3", "--steps", "1", "--repeat", "1"])
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert len(rows) == 1 and rows[0][0] == "3" and rows[0][5].endswith("x")
    with pytest.raises(SystemExit) as exc:
        local_step.main(["--ranks", "1"])
    assert exc.value.code == 2
