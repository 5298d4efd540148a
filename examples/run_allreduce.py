"""Allreduce across processes over the direct channel, as a training loop does it.

Run it with:  afmi run -n 4 examples/run_allreduce.py

Each step averages a "gradient" into one result array reused across steps
(``out=``): no new array per step, and the ring receives the other ranks'
data straight into it.
"""

# run: afmi run -n 4 examples/run_allreduce.py

import asyncio

import numpy as np

import afmi


async def main() -> None:
    async with afmi.connect() as comm:
        grad = np.empty(1_000_000, dtype=np.float64)
        total = np.empty_like(grad)  # the result array, reused every step
        for step in range(3):
            grad.fill(comm.rank + step)
            await comm.allreduce(grad, out=total)
            expected = comm.size * (comm.size - 1) / 2 + comm.size * step
            assert total[0] == expected == total[-1], (total[0], expected)
        stats = comm.endpoint.channels["direct"].stats()
        print(
            f"rank {comm.rank}/{comm.size}: allreduce -> {total[0]:.0f} (expected {expected:.0f}), "
            f"{stats['received_in_place']} messages received in place"
        )


if __name__ == "__main__":
    # uvloop when installed (afmi[direct]): about twice the default loop's socket speed
    with asyncio.Runner(loop_factory=afmi.launch.new_event_loop) as runner:
        runner.run(main())
