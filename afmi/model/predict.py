"""Predicted time (seconds) and price (dollars) of one operation on one channel.

The time follows the algorithm's own step structure
(:meth:`afmi.collectives.base.Algorithm.steps`): every step is ``rounds``
sequential rounds in which a rank sends ``messages`` messages of ``nbytes``
bytes, and a round costs :meth:`ChannelModel.round_time_s`. The price adds
storage requests, bytes moved, the channel's infrastructure share per
request, and the time of *every* participating function (FMI priced one).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from afmi.collectives.base import Step
from afmi.model.params import ChannelModel, FunctionPrice

__all__ = ["P2P", "Prediction", "StepModel", "predict", "traffic"]


class StepModel(Protocol):
    """What the model needs of an algorithm: a name and its step structure."""

    @property
    def name(self) -> str:
        """The algorithm's name."""
        ...

    def steps(self, size: int, nbytes: int) -> list[Step]:
        """The critical path as rounds of messages."""
        ...


class _PointToPoint:
    """A single message from one rank to another (``op="send"``)."""

    name = "p2p"
    collective = "send"

    def steps(self, size: int, nbytes: int) -> list[Step]:
        return [Step(1, nbytes, 1)]

    def traffic(self, size: int, nbytes: int) -> tuple[int, int]:
        return 1, nbytes


#: The pseudo-algorithm of point-to-point messages.
P2P = _PointToPoint()


@dataclass(frozen=True)
class Prediction:
    """Predicted time and dollars of ``op`` with ``algorithm`` on ``channel``."""

    op: str
    channel: str
    algorithm: str
    nbytes: int
    size: int
    #: Predicted duration of the operation, seconds.
    time_s: float
    #: Messages sent by all ranks together.
    messages: int
    #: Payload bytes moved by all ranks together.
    bytes_moved: int
    #: Storage requests (writes, reads and polls), dollars.
    request_usd: float
    #: Bytes moved at the channel's price per GB, dollars.
    transfer_usd: float
    #: The channel's servers, spread over their requests per hour, dollars.
    infrastructure_usd: float
    #: Function time: GiB-s price x memory x time x every participating function, dollars.
    function_usd: float

    @property
    def usd(self) -> float:
        """Total predicted price, dollars."""
        return self.request_usd + self.transfer_usd + self.infrastructure_usd + self.function_usd

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for JSON), with the total in ``usd``."""
        return {
            "op": self.op,
            "channel": self.channel,
            "algorithm": self.algorithm,
            "nbytes": self.nbytes,
            "size": self.size,
            "time_s": self.time_s,
            "usd": self.usd,
            "messages": self.messages,
            "bytes_moved": self.bytes_moved,
            "request_usd": self.request_usd,
            "transfer_usd": self.transfer_usd,
            "infrastructure_usd": self.infrastructure_usd,
            "function_usd": self.function_usd,
        }


#: Messages all ranks send together in the centralised form of each collective,
#: ``size -> (messages, payloads of nbytes moved)``; used when an algorithm does not
#: state its own traffic through a ``traffic(size, nbytes)`` method.
_CENTRAL: dict[str, Callable[[int], tuple[int, int]]] = {
    "barrier": lambda n: (2 * (n - 1), 0),
    "bcast": lambda n: (n - 1, n - 1),
    "scatter": lambda n: (n - 1, n - 1),
    "gather": lambda n: (n - 1, n - 1),
    "reduce": lambda n: (n - 1, n - 1),
    "allreduce": lambda n: (2 * (n - 1), 2 * (n - 1)),
    "allgather": lambda n: (2 * (n - 1), (n - 1) + n * (n - 1)),
    "reduce_scatter": lambda n: (2 * (n - 1), 2 * (n - 1)),
    "scan": lambda n: (2 * (n - 1), 2 * (n - 1)),
    "exscan": lambda n: (2 * (n - 1), 2 * (n - 1)),
    "alltoall": lambda n: (n * (n - 1), n * (n - 1)),
}


def traffic(op: str, algorithm: StepModel, size: int, nbytes: int) -> tuple[int, int]:
    """``(messages, bytes)`` all ranks send together for one call.

    An algorithm may say exactly with a ``traffic(size, nbytes)`` method;
    otherwise the larger of its critical path's messages and the
    centralised form's count is used (every algorithm moves at least that).
    """
    own = getattr(algorithm, "traffic", None)
    if callable(own):
        messages, moved = own(size, nbytes)
        return int(messages), int(moved)
    steps = algorithm.steps(size, nbytes)
    path_messages = sum(s.rounds * s.messages for s in steps)
    path_bytes = sum(s.rounds * s.messages * s.nbytes for s in steps)
    central = _CENTRAL.get(op)
    if central is None:
        return path_messages, path_bytes
    messages, payloads = central(size)
    return max(messages, path_messages), max(payloads * nbytes, path_bytes)


def predict(
    op: str,
    nbytes: int,
    size: int,
    algorithm: StepModel,
    channel: ChannelModel,
    functions: FunctionPrice,
) -> Prediction:
    """Predict ``op`` moving ``nbytes`` per rank on ``size`` ranks.

    ``size`` counts the participating functions (2 for ``op="send"``); all of
    them are priced for the whole predicted time.
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    nbytes = max(int(nbytes), 0)
    time_s = 0.0
    messages = moved = 0
    if size > 1:
        if op != "send":
            time_s += channel.call_overhead_s
        for step in algorithm.steps(size, nbytes):
            if step.rounds > 0 and step.messages > 0:
                time_s += step.rounds * channel.round_time_s(step.messages, step.nbytes)
        messages, moved = traffic(op, algorithm, size, nbytes)
    reads = messages * channel.reads_per_message
    return Prediction(
        op=op,
        channel=channel.name,
        algorithm=algorithm.name,
        nbytes=nbytes,
        size=size,
        time_s=time_s,
        messages=messages,
        bytes_moved=moved,
        request_usd=messages * channel.price_per_request_usd + reads * channel.price_per_read_usd,
        transfer_usd=moved / 1e9 * channel.price_per_gb_usd,
        infrastructure_usd=(messages + reads) * channel.infrastructure_usd_per_request(),
        function_usd=functions.usd(time_s, size),
    )
