"""Predicted time (seconds) and price (dollars) of one operation on one channel.

The time follows the algorithm's own step structure
(:meth:`afmi.collectives.base.Algorithm.steps`): every step is ``rounds``
sequential rounds in which a rank sends ``messages`` messages of ``nbytes``
bytes, and a round costs :meth:`ChannelModel.round_time_s`; reductions on
that path add their bytes at the op's rate. When ranks share CPUs, the work
of all of them (:func:`afmi.model.work.work`) runs one after another, which
bounds the time from below as well (:func:`timing`). The price adds
storage requests, bytes moved, the channel's infrastructure share per
request, and the time of *every* participating function (FMI priced one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from afmi.collectives.base import Step
from afmi.model.params import NO_PAYLOAD, ChannelModel, FunctionPrice
from afmi.model.work import work

__all__ = ["P2P", "Prediction", "StepModel", "predict", "timing", "traffic"]


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
    #: Storage requests behind ``request_usd``: writes (PUTs of messages, markers and
    #: pointers), reads (GETs of fetched payloads) and polls (LISTs of mailboxes).
    writes: float = 0.0
    reads: float = 0.0
    polls: float = 0.0

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
            "writes": self.writes,
            "reads": self.reads,
            "polls": self.polls,
        }


def traffic(op: str, algorithm: StepModel, size: int, nbytes: int) -> tuple[int, int]:
    """``(messages, bytes)`` all ranks send together for one call (see :func:`work`)."""
    w = work(op, algorithm, size, nbytes)
    return w.messages, w.bytes_sent


def timing(
    op: str, nbytes: int, size: int, algorithm: StepModel, channel: ChannelModel
) -> tuple[float, float]:
    """``(critical_path_s, shared_cpu_s)``: the two lower bounds of the predicted time.

    The critical path is the call overhead, the algorithm's rounds
    (:meth:`ChannelModel.round_time_s`) and the reductions on it. The CPU
    bound is the work of all ranks (call overheads, every message's software
    cost, which grows with the ranks sharing the CPUs, its bytes, the extra cost
    of a message longer than one TCP segment, every wait
    for messages, every reduction) divided by how many ranks run at once
    (:meth:`ChannelModel.parallelism`), plus ``wait_per_round_s`` for every round
    on the critical path, in which all ranks wait for the round's messages and
    none has work to run. It exists only where ranks share CPUs:
    with a CPU per rank (and for a point-to-point message) every rank's own
    work is already part of the measured latencies on the path.
    """
    if size <= 1:
        return 0.0, 0.0
    path = channel.call_s(op)
    rounds = 0
    for step in algorithm.steps(size, nbytes):
        if step.rounds > 0 and step.messages > 0:
            path += step.rounds * channel.round_time_s(step.messages, step.nbytes)
            rounds += step.rounds
    if op != "send" and rounds > 1:
        path += (rounds - 1) * channel.later_round_s
    if op != "send" and rounds > 0:
        path = max(path - channel.first_round_saving_s, 0.0)
    w = channel.channel_work(work(op, algorithm, size, nbytes))
    path_reduce_s, reduce_s = channel.reductions_s(w, nbytes)
    path += path_reduce_s
    share = channel.parallelism(size)
    if op == "send" or share >= size:
        return path, 0.0
    cpu = size * channel.call_s(op)
    per_message = channel.cpu_per_message_s + (size - 1) * channel.cpu_per_message_rank_s
    if op not in NO_PAYLOAD:
        per_message += channel.cpu_per_payload_message_s
    cpu += (w.messages + w.deliveries) / 2 * per_message
    cpu += channel.fetched_reads(w, nbytes) * channel.fetch_cpu_s()  # client's and server's
    cpu += channel.shared_read_cpu_s(w)
    cpu += channel.split_deliveries(w, nbytes, size) * channel.cpu_per_split_message_s
    cpu += w.receive_waits * channel.cpu_per_wait_s
    cpu += channel.cpu_bytes_s((w.bytes_sent + w.bytes_received) / 2)
    cpu += reduce_s
    return path, cpu / share + rounds * channel.wait_per_round_s


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
    path_s, cpu_s = timing(op, nbytes, size, algorithm, channel)
    time_s = max(path_s, cpu_s)
    w = channel.channel_work(work(op, algorithm, size, nbytes))
    messages, moved = w.messages, w.bytes_sent
    per_message = channel.reads_per_message
    inline = max(per_message - 1, 0.0)  # no GET: the message rode in the key
    reads = sum(
        count * (per_message if channel.fetches(size) else inline)
        for count, size in w.sized_deliveries(nbytes)
    )
    waits = w.receive_waits
    # Polls that find messages: one per wait, and where a wait collects several, some
    # of its further messages arrive after a poll found the ones before them.
    finds = float(waits)
    if waits and w.deliveries > waits:
        finds += (w.deliveries - waits) * channel.finds_per_further_message
    polls = w.deliveries * channel.polls_per_message + finds * channel.polls_per_wait
    if waits:
        # A wait lasts about one round of the call, less where a round's waits end one
        # after another (a root's messages go out in turn); it polls idly meanwhile,
        # its backoff starting again after every poll that finds some of its messages.
        rounds = max(sum(s.rounds for s in algorithm.steps(size, nbytes) if s.messages > 0), 1)
        wait_s = time_s / max(rounds, waits / rounds)
        polls += finds * channel.idle_polls(wait_s * waits / finds)
    writes = messages + w.shared_deliveries * channel.requests_per_shared_read
    return Prediction(
        op=op,
        channel=channel.name,
        algorithm=algorithm.name,
        nbytes=nbytes,
        size=size,
        time_s=time_s,
        messages=messages,
        bytes_moved=moved,
        request_usd=channel.requests_usd(writes, reads, polls),
        transfer_usd=moved / 1e9 * channel.price_per_gb_usd,
        infrastructure_usd=(messages + reads) * channel.infrastructure_usd_per_request(),
        function_usd=functions.usd(time_s, size),
        writes=writes,
        reads=reads,
        polls=polls,
    )
