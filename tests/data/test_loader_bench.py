"""The loader benchmark module runs end to end (small sizes; no timing asserted)."""

from afmi.bench.loader import format_table, main, run_loader_bench


async def test_loader_bench_small_run(s3):
    report = await run_loader_bench(
        samples=32,
        sample_bytes=256,
        ranks=2,
        epochs=2,
        batch=8,
        compute=0.001,
        prefetch=8,
        endpoint_url=s3.endpoint_url,
        bucket=s3.bucket,
    )
    res = report["results"]
    assert set(res) == {"naive", "lru", "lower", "afmi"}
    assert res["naive"]["origin_reads"] == [32, 32]  # every sample, every epoch
    assert res["lower"]["origin_reads"] == [0, 0]
    assert res["afmi"]["origin_reads"] == [32, 0]  # once per sample over the run
    assert report["checks"]["origin_reads_ok"] is True
    assert len(report["checks"]["epoch_over_lower_bound"]) == 1
    table = format_table(report)
    assert "| afmi | 2 |" in table and "origin reads / F = 1.000" in table


def test_loader_bench_rejects_unknown_loader(capsys):
    import pytest

    import afmi

    with pytest.raises(afmi.ArgumentError, match="unknown loader 'fast'"):
        main(["--loaders", "fast", "--samples", "8"])
