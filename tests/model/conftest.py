"""A second in-process channel, so that multi-channel endpoints can be tested for real."""

import pytest

from afmi.channels import base
from afmi.channels.local import LocalDriver


class SecondLocalDriver(LocalDriver):
    """The in-process channel under another name; afmi models it with ``direct``'s figures."""

    name = "local2"

    async def connect(self, rank, size, job, config, env):
        # The local channel joins ranks by job name; keep this one's jobs apart.
        return await super().connect(rank, size, f"{job}#local2", config, env)


@pytest.fixture
def local2():
    base.register_driver(SecondLocalDriver())
    try:
        yield "local2"
    finally:
        base._REGISTERED.pop("local2", None)


@pytest.fixture
def split():
    """A config under which small messages go on ``local`` and large ones on ``local2``."""
    return SPLIT


#: Makes ``local`` quick to start but slow to move bytes: small messages go on
#: ``local``, large ones on ``local2`` (which has ``direct``'s 400 MB/s).
SPLIT = {
    "model": {
        "local": {
            "latency_s": 1e-6,
            "per_message_s": 0.0,
            "bandwidth_single_bytes_per_s": 1e6,
            "bandwidth_aggregate_bytes_per_s": 1e6,
        }
    }
}
