"""The ``direct`` channel: TCP links between ranks, paired by a rendezvous service.

See docs/direct.md. :class:`DirectDriver` is what ``channel="direct"`` names.
"""

from afmi.channels.direct.channel import DirectChannel, punch
from afmi.channels.direct.driver import DirectDriver
from afmi.channels.direct.link import Link

__all__ = ["DirectChannel", "DirectDriver", "Link", "punch"]
