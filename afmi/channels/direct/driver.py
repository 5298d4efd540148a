""":class:`DirectDriver`: builds direct channels for ``run_local`` and ``connect``."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from afmi.channels.base import Channel
from afmi.channels.direct.channel import DirectChannel
from afmi.errors import ArgumentError
from afmi.rendezvous.server import RendezvousServer

if TYPE_CHECKING:
    from afmi.config import Config

__all__ = ["DirectDriver"]


def _check_enabled(config: Config) -> None:
    if not config.channels.direct.enabled:
        raise ArgumentError(
            "the direct channel is disabled (channels.direct.enabled = false in the config)"
        )


class DirectDriver:
    """Driver for ``channel="direct"``."""

    name = "direct"

    @asynccontextmanager
    async def group(self, size: int, job: str, config: Config) -> AsyncIterator[list[Channel]]:
        """Start an embedded rendezvous service and link ``size`` ranks over real sockets."""
        _check_enabled(config)
        cfg = config.channels.direct
        token = secrets.token_urlsafe(24)
        async with RendezvousServer(
            cfg.listen_host, 0, job_timeout=cfg.connect_timeout, tcp_congestion=cfg.tcp_congestion
        ) as rdv:
            channels: list[DirectChannel] = [None] * size  # type: ignore[list-item]

            async def open_one(rank: int) -> None:
                channels[rank] = await DirectChannel.open(rank, size, job, token, rdv.address, cfg)

            try:
                try:
                    async with asyncio.TaskGroup() as tg:
                        for rank in range(size):
                            tg.create_task(open_one(rank))
                except BaseExceptionGroup as group:
                    raise group.exceptions[0] from None
                yield list(channels)
            finally:
                await asyncio.gather(
                    *(ch.aclose() for ch in channels if ch is not None), return_exceptions=True
                )

    async def connect(
        self, rank: int, size: int, job: str, config: Config, env: Mapping[str, str]
    ) -> Channel:
        """Open one rank's channel; reads ``AFMI_RENDEZVOUS`` and ``AFMI_TOKEN`` from ``env``."""
        _check_enabled(config)
        cfg = config.channels.direct
        address = env.get("AFMI_RENDEZVOUS") or cfg.rendezvous
        if not address:
            raise ArgumentError(
                "the direct channel needs a rendezvous service: set AFMI_RENDEZVOUS=host:port "
                "(afmi run does) or channels.direct.rendezvous in the config"
            )
        token = env.get("AFMI_TOKEN")
        if not token:
            raise ArgumentError(
                "the direct channel needs the job's secret: set AFMI_TOKEN (afmi run does)"
            )
        return await DirectChannel.open(rank, size, job, token, address, cfg)
