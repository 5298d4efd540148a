"""The invoker against real `afmi serve` processes: jobs spread over runtimes and channels,
transport errors, argument checks, no leaked tasks; and the cost report's arithmetic."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from serve_handlers import serve

import afmi
from afmi.errors import ArgumentError
from afmi.runtime.cost import Prices, billed_ms, cost_report
from afmi.runtime.invoke import HttpTarget, JobFailedError, invoke_job
from afmi.testing.servers import free_port


def channel_available(name: str) -> bool:
    try:
        afmi.channels.base.get_driver(name)
    except ArgumentError:
        return False
    return True


async def test_unreachable_runtime_fails_the_job_naming_a_rank():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(JobFailedError) as info:
        await invoke_job(HttpTarget(url), 2, channel="local", timeout=5)
    assert info.value.rank in (0, 1)
    assert "invoking" in str(info.value) and url in str(info.value)
    assert asyncio.all_tasks() == {asyncio.current_task()}  # nothing left running


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"size": 0}, "size (-n) must be a positive int"),
        ({"size": 2, "channel": "pigeon"}, "'channel' must be one of"),
        ({"size": 2, "config": {"nope": 1}}, "unknown config key 'nope'"),
        ({"size": 2, "timeout": 0}, "timeout must be > 0"),
    ],
)
async def test_bad_arguments_fail_before_invoking(kwargs, says):
    target = HttpTarget(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ArgumentError) as info:
        await invoke_job(target, **kwargs)
    assert says in str(info.value)


def test_http_target_checks_urls():
    with pytest.raises(ArgumentError, match="must look like http://host:port"):
        HttpTarget("127.0.0.1:8080")
    with pytest.raises(ArgumentError, match="at least one URL"):
        HttpTarget()


def _spread_job(subprocess_env, channel, config, size=8):
    """A job of `size` ranks spread round-robin over two runtimes (two processes)."""
    with serve(subprocess_env) as a, serve(subprocess_env) as b:
        result = asyncio.run(
            invoke_job(HttpTarget(a.url, b.url), size, channel=channel, config=config, timeout=60)
        )
        health = [a.wait_idle(), b.wait_idle()]
    return result, health


@pytest.mark.skipif(
    not channel_available("redis"), reason="redis channel unavailable (afmi[redis] not installed)"
)
def test_job_spread_over_two_runtimes_over_redis(subprocess_env, redis_url):
    result, health = _spread_job(
        subprocess_env, "redis", {"channels": {"redis": {"url": redis_url}}}
    )
    assert all(r["sum"] == [36.0] * 4 for r in result.results)
    assert [h["ok"] for h in health] == [4, 4]  # ranks really were spread
    assert "redis server" in result.cost.infrastructure
    assert all("redis" in r.stats for r in result.ranks)


@pytest.mark.skipif(not channel_available("direct"), reason="direct channel unavailable")
def test_job_spread_over_two_runtimes_over_direct(subprocess_env):
    result, health = _spread_job(subprocess_env, "direct", None)
    assert all(r["sum"] == [36.0] * 4 for r in result.results)
    assert [h["ok"] for h in health] == [4, 4]
    assert "rendezvous VM" in result.cost.infrastructure


@pytest.mark.skipif(
    not channel_available("s3"), reason="s3 channel unavailable (afmi[s3] not installed)"
)
def test_s3_job_reports_storage_requests(s3, subprocess_env):
    config = {"channels": {"s3": s3.config(prefix=f"t{uuid.uuid4().hex[:8]}")}}
    with serve(subprocess_env) as runtime:
        result = asyncio.run(
            invoke_job(HttpTarget(runtime.url), 4, channel="s3", config=config, timeout=60)
        )
    assert all(r["sum"] == [10.0] * 4 for r in result.results)
    requests = result.cost.storage_requests
    assert requests.get("s3 put", 0) > 0, requests
    assert result.cost.storage_usd > 0
    assert result.cost.infrastructure == {}


async def test_root_cause_is_named_even_when_a_consequence_answers_first():
    from afmi.runtime.invoke import RankResult, _root_cause

    done: dict[int, RankResult] = {}
    release = asyncio.Event()

    async def answer(rank, error_type, wait):
        if wait:
            await release.wait()
        done[rank] = RankResult(rank, False, error_type=error_type, error="x")
        return done[rank]

    consequence = asyncio.create_task(answer(1, "ChannelError", False))
    cause = asyncio.create_task(answer(3, "ValueError", True))
    first = await consequence
    naming = asyncio.create_task(_root_cause(first, [consequence, cause], done))
    await asyncio.sleep(0)
    release.set()
    assert (await naming).rank == 3
    # A primary error is named at once.
    assert await _root_cause(done[3], [consequence, cause], done) is done[3]


# -- cost report --
def test_billed_ms_rounds_up_to_the_millisecond():
    assert billed_ms(0.0) == 1
    assert billed_ms(0.001) == 1
    assert billed_ms(0.0010001) == 2
    assert billed_ms(1.5) == 1500
    with pytest.raises(ValueError, match="finite number of seconds"):
        billed_ms(-1.0)


def test_cost_counts_every_function_memory_and_requests():
    cfg = afmi.Config.from_dict({"faas": {"memory_mb": 2048, "gib_second_price": 0.00002}})
    report = cost_report(
        "j",
        "s3",
        [0.1004, 0.2, 0.3],
        wall_s=0.5,
        config=cfg,
        stats=[
            {"s3": {"requests": {"put": 3, "get": 5, "list": 2, "delete": 3}}},
            {"s3": {"requests": {"put": 1, "head": 1}}},
            {},
        ],
        prices=Prices(function_request_usd=1e-7, s3_write_usd=1e-5, s3_read_usd=1e-6),
    )
    assert report.functions == 3
    assert report.billed_ms_total == 101 + 200 + 300
    assert report.gib_seconds == pytest.approx(0.601 * 2)
    assert report.function_time_usd == pytest.approx(0.601 * 2 * 0.00002)
    assert report.function_requests_usd == pytest.approx(3e-7)
    assert report.storage_requests == {
        "s3 put": 4,
        "s3 get": 5,
        "s3 list": 2,
        "s3 delete": 3,
        "s3 head": 1,
    }
    assert report.storage_usd == pytest.approx(6 * 1e-5 + 6 * 1e-6)  # deletes are free
    assert report.infrastructure == {}
    assert report.total_usd == pytest.approx(
        report.function_time_usd + report.function_requests_usd + report.storage_usd
    )
    text = report.format()
    assert "601 ms billed x 2 GiB" in text and "GiB-s" in text and "s3 put 4" in text
    assert report.to_dict()["total_usd"] == report.total_usd


@pytest.mark.parametrize(
    ("channel", "item", "per_hour"),
    [("redis", "redis server", 0.038), ("direct", "rendezvous VM", 0.0134)],
)
def test_infrastructure_is_charged_for_the_wall_time(channel, item, per_hour):
    report = cost_report("j", channel, [1.0, 1.0], wall_s=36.0)
    assert report.infrastructure[item]["usd"] == pytest.approx(per_hour / 100)
    assert report.infrastructure_usd == pytest.approx(per_hour / 100)
    assert item in report.format()
