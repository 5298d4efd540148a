"""Overlap communication with compute: start an iallreduce of gradients, keep computing.

Each rank computes gradients layer by layer (back to front, as backpropagation does)
and starts a nonblocking allreduce for each layer as soon as it is ready, so the
reduction of one layer proceeds while the next layer is computed.

# run: python examples/iallreduce_overlap.py
"""

import asyncio

import numpy as np

import afmi

LAYERS = [(256, 256), (256, 128), (128, 10)]


async def compute_layer_gradient(rank: int, layer: int) -> np.ndarray:
    rng = np.random.default_rng([rank, layer])
    grad = rng.normal(size=LAYERS[layer])
    await asyncio.sleep(0)  # a real job would yield while its compute runs elsewhere
    return grad


async def main(comm: afmi.Communicator) -> bool:
    pending: list[afmi.Request[np.ndarray]] = []
    for layer in reversed(range(len(LAYERS))):
        grad = await compute_layer_gradient(comm.rank, layer)
        pending.append(comm.iallreduce(grad, op=afmi.SUM))  # returns at once
    summed = await afmi.waitall(pending)
    averaged = [g / comm.size for g in reversed(summed)]

    # Check against a local reference: the mean of every rank's gradient.
    for layer, got in enumerate(averaged):
        expected = np.mean(
            [
                np.random.default_rng([r, layer]).normal(size=LAYERS[layer])
                for r in range(comm.size)
            ],
            axis=0,
        )
        assert np.allclose(got, expected), f"layer {layer} differs"
    return True


if __name__ == "__main__":
    ok = afmi.run_local(main, 4)
    print(f"averaged gradients of {len(LAYERS)} layers on 4 ranks: {'ok' if all(ok) else 'WRONG'}")
