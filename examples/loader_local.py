"""Clairvoyant loading on 4 ranks: every rank reads its share of each batch in plan order.

The origin is an in-memory array made to look slow (as an object store is),
so from the second epoch on the ranks read from their own memory tier and
from the peer that holds a sample instead.

# run: python examples/loader_local.py
"""

import numpy as np

import afmi
from afmi.data import AccessPlan, ArraySource, Loader, SourceCost, SourceModel

SAMPLES, FEATURES, EPOCHS = 256, 8, 3
data = np.arange(SAMPLES * FEATURES, dtype=np.float32).reshape(SAMPLES, FEATURES)


async def main(comm):
    source = ArraySource(data)
    plan = AccessPlan(len(source), comm.size, global_batch_size=32, epochs=EPOCHS, seed=7)
    # pretend the origin costs 20 ms per read, like an object store
    model = SourceModel({"origin": SourceCost(latency=0.02, bandwidth=50e6)})
    share = SAMPLES * FEATURES * 4 // comm.size
    total = 0.0
    async with Loader(
        source, plan, comm=comm, memory_bytes=share + share // 4, model=model, collate=True
    ) as loader:
        for epoch in range(EPOCHS):
            async for batch in loader.epoch(epoch):  # (local batch, FEATURES) arrays
                total += float(batch.sum())
            total = await comm.allreduce(total)
    return total, loader.stats()


if __name__ == "__main__":
    results = afmi.run_local(main, 4, timeout=60)
    totals = {round(t) for t, _ in results}
    assert len(totals) == 1, totals  # every rank reduced the same sums
    print("epoch  origin  peer  memory  (samples, all ranks)")
    for e in range(EPOCHS):
        kinds = ("origin", "peer", "memory")
        row = [sum(st["epochs"][e]["samples"][k] for _, st in results) for k in kinds]
        print(f"{e:5d}  {row[0]:6d}  {row[1]:4d}  {row[2]:6d}")
