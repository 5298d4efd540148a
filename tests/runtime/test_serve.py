"""`afmi serve` as a real subprocess: many invocations in one process, validation, errors,
timeouts, cancellation, Lambda's Invoke API path, structured logs, no leaked tasks."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import pytest
from serve_handlers import THIS, serve

from afmi.runtime.invoke import HttpTarget, JobFailedError, LambdaTarget, invoke_job

EXPECTED_SUM = [36.0] * 4  # ranks 0..7 each contribute rank + 1


@pytest.fixture(scope="module")
def served():
    import os
    from pathlib import Path

    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    with serve(env) as s:
        yield s


def post(url: str, body: bytes, headers: dict[str, str] | None = None):
    req = urllib.request.Request(url, data=body, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


def test_health(served):
    health = served.health()
    assert health["status"] == "ok"
    assert health["handler"].endswith("serve_handlers.py:job")
    assert health["active"] == 0


async def test_job_of_8_over_local_channel(served):
    before = served.health()
    result = await invoke_job(HttpTarget(served.url), 8, {"input": "x"}, channel="local")
    assert [r["rank"] for r in result.results] == list(range(8))
    assert all(r["sum"] == EXPECTED_SUM and r["input"] == "x" for r in result.results)
    assert all(r.ok and r.handler_duration_s is not None for r in result.ranks)
    assert all("local" in r.stats and r.stats["local"]["messages_sent"] > 0 for r in result.ranks)
    assert result.cost.functions == 8
    assert result.cost.billed_ms_total >= 8  # at least 1 ms per function
    after = served.wait_idle(tasks=before["tasks"])
    assert after["active"] == 0 and after["local_jobs"] == 0  # every local hub released
    assert after["ok"] - before["ok"] == 8
    assert after["tasks"] == before["tasks"]  # no task left behind in the runtime
    assert asyncio.all_tasks() == {asyncio.current_task()}  # nor in the invoker


async def test_concurrent_jobs_share_one_runtime(served):
    target = HttpTarget(served.url)  # one target (one HTTP session) shared by three jobs
    results = await asyncio.gather(
        *(invoke_job(target, 4, {"input": j}, channel="local") for j in range(3))
    )
    for j, res in enumerate(results):
        assert [r["input"] for r in res.results] == [j] * 4
        assert all(r["sum"] == [10.0] * 4 for r in res.results)  # 1+2+3+4
    assert len({res.job for res in results}) == 3


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"size": 2, "job": "j"}', "missing key 'rank'"),
        (b'{"rank": 2, "size": 2, "job": "j"}', "'rank' must be in 0..1"),
        (b'{"rank": 0, "size": 2, "job": ""}', "'job' must be a non-empty string"),
        (b'{"rank": 0, "size": 1, "job": "j", "channel": "pigeon"}', "'channel' must be one of"),
        (b'{"rank": 0, "size": 1, "job": "j", "config": {"timeot": 1}}', "unknown config key"),
        (b'{"rank": 0, "size": 2, "job": "j", "channel": "direct"}', "needs 'rendezvous'"),
        (b'{"rank": 0, "size": 1, "job": "j", "timeout": -1}', "'timeout' must be a positive"),
    ],
)
def test_bad_payload_gets_400_saying_what_is_wrong(served, body, says):
    status, _, doc = post(served.url + "/invoke", body)
    assert status == 400
    assert doc["errorType"] == "InvocationError"
    assert says in doc["errorMessage"]


def test_bad_payload_on_lambda_path_is_a_client_error(served):
    status, headers, doc = post(served.url + "/2015-03-31/functions/f/invocations", b"{}")
    assert status == 400
    assert headers["x-amzn-ErrorType"] == "InvalidRequestContentException"
    assert "missing key 'size'" in doc["message"]


async def test_handler_raising_fails_the_job_naming_the_rank(served):
    with pytest.raises(JobFailedError) as info:
        await invoke_job(
            HttpTarget(served.url), 4, {"mode": "fail", "fail_rank": 3}, channel="local"
        )
    assert info.value.rank == 3
    assert "rank 3" in str(info.value) and "ValueError: boom on rank 3" in str(info.value)
    # Ranks that had not answered are listed (a rank whose barrier saw rank 3's channel
    # close may already have answered with a ChannelError; rank 3 is still named).
    answered = {r.rank for r in info.value.ranks}
    assert 3 in answered
    waiting = sorted(set(range(4)) - answered)
    if waiting:
        plural = "s" if len(waiting) > 1 else ""
        listed = ", ".join(map(str, waiting))
        assert f"(no answer yet from rank{plural} {listed})" in str(info.value)
    # The other ranks wait in a barrier for rank 3; the invoker cancels them.
    health = served.wait_idle()
    assert health["active"] == 0 and health["local_jobs"] == 0


async def test_timeout_names_the_stuck_rank(served):
    with pytest.raises(JobFailedError) as info:
        await invoke_job(HttpTarget(served.url), 3, {"mode": "sleep", "sleep_rank": 2}, timeout=0.5)
    assert info.value.rank == 2
    assert info.value.failed.error_type == "OperationTimeoutError"
    assert "did not finish within 0.5 s" in str(info.value)
    assert served.wait_idle()["active"] == 0


def test_rank_whose_peers_never_come_times_out_and_leaves_nothing(served):
    body = json.dumps({"rank": 0, "size": 2, "job": "lonely", "timeout": 0.3}).encode()
    status, _, doc = post(served.url + "/invoke", body)
    assert status == 504
    assert "rank 0 of job 'lonely' did not finish within 0.3 s" in doc["errorMessage"]
    health = served.wait_idle()
    assert health["active"] == 0 and health["local_jobs"] == 0


async def test_cancelling_the_invoker_cancels_the_job(served):
    task = asyncio.create_task(
        invoke_job(HttpTarget(served.url), 3, {"mode": "sleep", "sleep_rank": 1}, timeout=60)
    )
    while served.health()["active"] < 1:  # rank 1 is asleep in the runtime
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    health = served.wait_idle()
    assert health["active"] == 0 and health["local_jobs"] == 0
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_lambda_invoke_api_drives_the_runtime(served, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    target = LambdaTarget("afmi-fn", endpoint_url=served.url, region="us-east-1")
    first, second = await asyncio.gather(  # one Lambda client shared by two jobs at once
        invoke_job(target, 8, {"input": 5}, channel="local"),
        invoke_job(target, 8, {"input": 6}, channel="local"),
    )
    assert all(r["sum"] == EXPECTED_SUM and r["input"] == 5 for r in first.results)
    assert all(r["sum"] == EXPECTED_SUM and r["input"] == 6 for r in second.results)
    assert target._client is None  # closed after the last job
    with pytest.raises(JobFailedError) as info:
        await invoke_job(
            LambdaTarget("afmi-fn", endpoint_url=served.url, region="us-east-1"),
            2,
            {"mode": "fail", "fail_rank": 0},
            channel="local",
            timeout=2,  # Lambda cannot cancel rank 1: it ends at its own timeout
        )
    assert info.value.rank == 0 and "boom on rank 0" in str(info.value)


def test_cli_invoke_success_and_failure(served, tmp_path, afmi_cli):
    payload = tmp_path / "payload.json"
    payload.write_text(json.dumps({"input": 1}))
    cmd = ["invoke", "-n", "4", "--url", served.url]
    ok = afmi_cli(*cmd, "--payload", str(payload), "--json")
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert [r["result"]["sum"] for r in doc["ranks"]] == [[10.0] * 4] * 4
    assert doc["cost"]["functions"] == 4 and doc["cost"]["total_usd"] > 0

    payload.write_text(json.dumps({"mode": "fail", "fail_rank": 1}))
    bad = afmi_cli(*cmd, "--payload", str(payload))
    assert bad.returncode == 1
    assert "rank 1: ValueError: boom on rank 1" in bad.stderr


def test_cli_invoke_through_lambda_api(served, afmi_cli, subprocess_env):
    env = {**subprocess_env, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    proc = afmi_cli(
        "invoke",
        "-n",
        "3",
        "--lambda",
        "fn",
        "--endpoint-url",
        served.url,
        "--region",
        "us-east-1",
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "3 ranks over local, all ok" in proc.stdout
    assert "function time" in proc.stdout and "GiB-s" in proc.stdout


def test_cli_rejects_bad_input(served, tmp_path, afmi_cli):
    payload = tmp_path / "payload.json"
    payload.write_text("[1]")
    proc = afmi_cli("invoke", "-n", "2", "--url", served.url, "--payload", str(payload))
    assert proc.returncode == 2
    assert "must hold a JSON object" in proc.stderr


def test_structured_logs(subprocess_env):
    with serve(subprocess_env) as s:
        asyncio.run(invoke_job(HttpTarget(s.url), 2, channel="local"))
        post(s.url + "/invoke", b"{}")
    events = [json.loads(line) for line in s.stderr if line.startswith("{")]
    assert len(events) == len(s.stderr)  # every log line is one JSON object
    names = [e["event"] for e in events]
    assert names[0] == "serve.start" and names[-1] == "serve.stop"
    ends = [e for e in events if e["event"] == "invocation.end"]
    assert sorted(e["rank"] for e in ends) == [0, 1]
    assert all(e["status"] == 200 and e["duration_s"] > 0 for e in ends)
    assert any(e["event"] == "invocation.rejected" for e in events)
    assert s.proc.returncode == 0  # SIGTERM is a clean shutdown


@pytest.mark.parametrize(
    ("target", "says"),
    [
        (f"{THIS}:not_async", "must be an async function"),
        (f"{THIS}:missing", "has no attribute 'missing'"),
        ("no_such_module_xyz:handler", "cannot import handler module"),
        ("nocolon", "must look like module:function"),
    ],
)
def test_serve_refuses_bad_handler(target, says, afmi_cli):
    proc = afmi_cli("serve", target, "--port", "0")
    assert proc.returncode == 2
    assert says in proc.stderr
