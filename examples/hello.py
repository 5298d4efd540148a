"""Hello afmi: point-to-point messages and a broadcast between 4 ranks in one process.

# run: python examples/hello.py
"""

import asyncio

import numpy as np

import afmi


async def main(comm: afmi.Communicator) -> str:
    # Point-to-point: each rank sends a greeting to the next one (a ring).
    right = (comm.rank + 1) % comm.size
    left = (comm.rank - 1) % comm.size
    greeting = await comm.sendrecv(f"hello from {comm.rank}", dest=right, source=left)

    # Broadcast: rank 0's settings reach everyone; numpy arrays travel as raw buffers.
    settings = {"lr": 0.1, "weights": np.arange(4.0)} if comm.rank == 0 else None
    settings = await comm.bcast(settings, root=0)

    total = await comm.allreduce(comm.rank)
    return f"rank {comm.rank}/{comm.size}: got {greeting!r}, lr={settings['lr']}, sum={total}"


if __name__ == "__main__":
    for line in afmi.run_local(main, 4):
        print(line)
    # Inside an already running event loop, use `await afmi.launch_local(main, 4)`.
    asyncio.run(afmi.launch_local(main, 2))
