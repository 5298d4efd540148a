"""afmi: asyncio-native MPI-style message passing for serverless functions.

Quick start::

    import afmi

    async def main(comm):
        data = await comm.bcast({"step": 1} if comm.rank == 0 else None)
        return await comm.allreduce(comm.rank)

    print(afmi.run_local(main, 4))   # [6, 6, 6, 6]
"""

from afmi.comm import TAG_UB, Communicator
from afmi.config import Config
from afmi.errors import (
    AfmiError,
    ArgumentError,
    ChannelError,
    ConfigError,
    OperationTimeoutError,
    PayloadTypeError,
    RankFailedError,
)
from afmi.launch import connect, launch_local, run_local
from afmi.ops import BAND, BOR, BXOR, LAND, LOR, LXOR, MAX, MAXLOC, MIN, MINLOC, PROD, SUM, Op
from afmi.request import Request, Status, testall, waitall, waitany
from afmi.wire.matching import ANY_SOURCE, ANY_TAG

__version__ = "0.1.0"

__all__ = [
    "ANY_SOURCE",
    "ANY_TAG",
    "AfmiError",
    "ArgumentError",
    "BAND",
    "BOR",
    "BXOR",
    "ChannelError",
    "Communicator",
    "Config",
    "ConfigError",
    "LAND",
    "LOR",
    "LXOR",
    "MAX",
    "MAXLOC",
    "MIN",
    "MINLOC",
    "Op",
    "OperationTimeoutError",
    "PROD",
    "PayloadTypeError",
    "RankFailedError",
    "Request",
    "SUM",
    "Status",
    "TAG_UB",
    "__version__",
    "connect",
    "launch_local",
    "run_local",
    "testall",
    "waitall",
    "waitany",
]
