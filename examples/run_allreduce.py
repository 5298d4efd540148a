"""Allreduce across processes over the direct channel.

Run it with:  afmi run -n 4 examples/run_allreduce.py
"""

# run: afmi run -n 4 examples/run_allreduce.py

import asyncio

import numpy as np

import afmi


async def main() -> None:
    async with afmi.connect() as comm:
        x = np.full(1_000_000, comm.rank, dtype=np.float64)
        total = await comm.allreduce(x)
        expected = comm.size * (comm.size - 1) / 2
        assert total[0] == expected, total[0]
        print(
            f"rank {comm.rank}/{comm.size}: allreduce -> {total[0]:.0f} (expected {expected:.0f})"
        )


if __name__ == "__main__":
    asyncio.run(main())
