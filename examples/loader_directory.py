"""One rank reading files through a small memory tier and a disk tier.

Writes 64 sample files into a temporary directory, then trains 3 epochs with a
memory tier for a quarter of the data and a disk tier for the rest: epoch 1
reads the directory (the origin), epochs 2 and 3 read only the tiers. Also shows
that a missing file is reported with the sample id and its path.

# run: python examples/loader_directory.py
"""

import asyncio
import os
import tempfile

from afmi.data import AccessPlan, DirectorySource, Loader, SampleReadError


def write_samples(directory: str) -> None:
    for i in range(64):
        with open(os.path.join(directory, f"{i:03d}.bin"), "wb") as f:
            f.write(bytes([i]) * 1024)


async def main() -> None:
    with tempfile.TemporaryDirectory() as data_dir, tempfile.TemporaryDirectory() as scratch:
        write_samples(data_dir)
        source = DirectorySource(data_dir)
        plan = AccessPlan(len(source), world_size=1, global_batch_size=8, epochs=3, seed=1)
        async with Loader(
            source, plan, memory_bytes=16 * 1024, disk_bytes=48 * 1024, disk_dir=scratch
        ) as loader:
            for epoch in range(plan.epochs):
                j = 0
                async for batch in loader.epoch(epoch):  # lists of bytes, in plan order
                    assert [b[0] for b in batch] == plan.batch(0, epoch, j).tolist()
                    j += 1
                st = loader.stats()["epochs"][epoch]["samples"]
                print(f"epoch {epoch}: origin {st['origin']}, memory {st['memory']}, ", end="")
                print(f"disk {st['disk']}")

        os.unlink(os.path.join(data_dir, "005.bin"))
        async with Loader(source, plan) as loader:
            try:
                async for _ in loader.epoch(0):
                    pass
            except SampleReadError as exc:
                print("as expected:", exc)


if __name__ == "__main__":
    asyncio.run(main())
