"""Rank program for cross-process tests: run a module-level ``main(comm, *args)`` by name.

Usage: python rank_main.py module:function OUTDIR ARGS_B64
Each rank pickles its result (or its exception text) to OUTDIR/rank<N>.pkl.
"""

import asyncio
import base64
import importlib
import os
import pickle
import sys

import afmi


async def run(target: str, outdir: str, args_b64: str) -> None:
    module, _, name = target.partition(":")
    fn = getattr(importlib.import_module(module), name)
    args = pickle.loads(base64.b64decode(args_b64))
    async with afmi.connect() as comm:
        result = await fn(comm, *args)
    with open(os.path.join(outdir, f"rank{comm.rank}.pkl"), "wb") as f:
        pickle.dump(result, f, protocol=5)


if __name__ == "__main__":
    with asyncio.Runner(loop_factory=afmi.launch.new_event_loop) as runner:
        runner.run(run(*sys.argv[1:4]))
