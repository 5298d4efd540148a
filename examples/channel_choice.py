"""The model picks a channel per operation; explain shows why, with_channel pins one.

Opens every channel this machine can (``channel="auto"``: always ``local``, plus
``direct``, ``redis`` or ``s3`` when installed and configured), prints the
model's table for a large allreduce, then runs it both as chosen and pinned.
"""

# run: python examples/channel_choice.py

import warnings

import numpy as np

import afmi


async def main(comm: afmi.Communicator) -> float:
    x = np.full(1 << 17, comm.rank, dtype=np.float64)  # 1 MiB per rank
    if comm.rank == 0:
        print(f"open channels: {', '.join(comm.channels)}")
        print(comm.explain("allreduce", x.nbytes))
        print(comm.explain("allreduce", x.nbytes, hint="cheap"))
    chosen = await comm.allreduce(x)
    pinned = await comm.with_channel("local").allreduce(x)
    assert np.array_equal(chosen, pinned)
    return float(chosen[0])


if __name__ == "__main__":
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a configured channel that cannot open is skipped
        results = afmi.run_local(main, 4, channel="auto", timeout=60)
    print(f"allreduce on every rank: {results}")
