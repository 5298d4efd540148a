"""Channel drivers behind one small protocol (see :mod:`afmi.channels.base`)."""

from afmi.channels.base import (
    Channel,
    ChannelDriver,
    available_drivers,
    get_driver,
    register_driver,
)

__all__ = ["Channel", "ChannelDriver", "available_drivers", "get_driver", "register_driver"]
