"""Registers every built-in algorithm with the registry (imported lazily by it)."""

from __future__ import annotations

from afmi.collectives import linear
from afmi.collectives.registry import register

for _cls in (
    linear.LinearBarrier,
    linear.LinearBcast,
    linear.LinearGather,
    linear.LinearScatter,
    linear.LinearAllgather,
    linear.LinearAlltoall,
    linear.LinearReduce,
    linear.LinearAllreduce,
    linear.LinearReduceScatter,
    linear.LinearScan,
    linear.LinearExscan,
):
    register(_cls())

from afmi.collectives import storage as _storage  # noqa: E402,F401  (storage algorithms)
