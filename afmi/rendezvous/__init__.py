"""The rendezvous service where ranks of a job find each other; see docs/direct.md."""

from afmi.rendezvous.client import RendezvousSession, open_relay, parse_address
from afmi.rendezvous.protocol import RendezvousError
from afmi.rendezvous.server import RendezvousServer

__all__ = [
    "RendezvousError",
    "RendezvousServer",
    "RendezvousSession",
    "open_relay",
    "parse_address",
]
