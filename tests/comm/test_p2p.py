import asyncio

import numpy as np
import pytest

import afmi


async def test_send_recv_status_and_sendrecv():
    async def main(comm):
        if comm.rank == 0:
            await comm.send({"x": np.arange(3)}, dest=1, tag=11)
            return await comm.sendrecv("ping", dest=1, source=1)
        st = afmi.Status()
        got = await comm.recv(source=0, tag=11, status=st)
        reply = await comm.sendrecv("pong", dest=0, source=0)
        return got["x"].tolist(), (st.source, st.tag, st.nbytes > 24), reply

    out = await afmi.launch_local(main, 2)
    assert out == ["pong", ([0, 1, 2], (0, 11, True), "ping")]


async def test_buffered_send_does_not_wait_for_receiver():
    async def main(comm):
        if comm.rank == 0:
            for i in range(50):  # no receive posted yet on rank 1
                await comm.send(i, 1)
            await comm.send("done", 1, tag=1)
            return None
        await comm.recv(0, tag=1)  # arrives after all 50; they were queued
        return [await comm.recv(0, tag=0) for _ in range(50)]

    out = await afmi.launch_local(main, 2)
    assert out[1] == list(range(50))


async def test_receiver_never_sees_later_changes_to_sent_array():
    async def main(comm):
        if comm.rank == 0:
            a = np.zeros(1000)
            req = comm.isend(a, 1)
            await req
            a[:] = 7
            await comm.send(a, 1)
            return None
        first = await comm.recv(0)
        second = await comm.recv(0)
        return float(first.sum()), float(second.sum())

    out = await afmi.launch_local(main, 2)
    assert out[1] == (0.0, 7000.0)


async def test_iprobe_sees_without_consuming():
    async def main(comm):
        if comm.rank == 1:
            await comm.send(b"abc", 0, tag=4)
            return None
        st = afmi.Status()
        while not comm.iprobe(1, 4, status=st):
            await asyncio.sleep(0.001)
        assert not comm.iprobe(1, 5)
        return st.tag, await comm.recv(1, 4)

    out = await afmi.launch_local(main, 2)
    assert out[0] == (4, b"abc")


async def test_irecv_request_api():
    async def main(comm):
        if comm.rank == 0:
            req = comm.irecv(1, tag=2)
            assert req.test() == (False, None) and not req.done()
            await comm.send("go", 1)
            value = await req
            assert req.test() == (True, value) and req.result() == value
            assert not req.cancel()
            return value, req.status.source, req.status.tag
        await comm.recv(0)
        await comm.send([1, 2], 0, tag=2)
        return None

    out = await afmi.launch_local(main, 2)
    assert out[0] == ([1, 2], 1, 2)


async def test_waitany_waitall_testall():
    async def main(comm):
        if comm.rank == 0:
            reqs = [comm.irecv(1, tag=t) for t in range(3)]
            assert afmi.testall(reqs) == (False, None)
            await comm.send("send tag 2 first", 1)
            index, value = await afmi.waitany(reqs)
            rest = await afmi.waitall(reqs)
            return index, value, rest, afmi.testall(reqs)
        await comm.recv(0)
        await comm.send("two", 0, tag=2)
        await comm.send("zero", 0, tag=0)
        await comm.send("one", 0, tag=1)
        return None

    index, value, rest, tested = (await afmi.launch_local(main, 2))[0]
    assert (index, value) == (2, "two")
    assert rest == ["zero", "one", "two"]
    assert tested == (True, ["zero", "one", "two"])


async def test_request_wait_timeout_leaves_request_running():
    async def main(comm):
        if comm.rank == 0:
            req = comm.irecv(1)
            with pytest.raises(afmi.OperationTimeoutError, match="irecv"):
                await req.wait(timeout=0.05)
            with pytest.raises(afmi.OperationTimeoutError, match="waitall"):
                await afmi.waitall([req], timeout=0.05)
            with pytest.raises(afmi.OperationTimeoutError, match="waitany"):
                await afmi.waitany([req], timeout=0.05)
            await comm.send("go", 1)
            return await req.wait(timeout=30)
        await comm.recv(0)
        await comm.send("ok", 0)
        return None

    assert (await afmi.launch_local(main, 2))[0] == "ok"


async def test_cancel_task_awaiting_irecv_cancels_it_and_keeps_message():
    async def main(comm):
        if comm.rank == 0:
            req = comm.irecv(1)

            async def consume():
                return await req

            waiter = asyncio.ensure_future(consume())
            await asyncio.sleep(0.01)
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            assert req.cancelled()
            await comm.send("go", 1)
            return await comm.recv(1, timeout=30)
        await comm.recv(0)
        await comm.send("kept", 0)
        return None

    assert (await afmi.launch_local(main, 2))[0] == "kept"


async def test_cancelling_req_wait_only_stops_waiting():
    async def main(comm):
        if comm.rank == 0:
            req = comm.irecv(1)
            waiter = asyncio.ensure_future(req.wait())
            await asyncio.sleep(0.01)
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            assert not req.done()
            await comm.send("go", 1)
            return await req
        await comm.recv(0)
        await comm.send("still mine", 0)
        return None

    assert (await afmi.launch_local(main, 2))[0] == "still mine"


async def test_isend_errors_surface_at_call_time():
    async def main(comm):
        with pytest.raises(afmi.PayloadTypeError, match="object"):
            comm.isend(object(), 0)
        with pytest.raises(afmi.ArgumentError, match="dest=5"):
            comm.isend(1, 5)
        return True

    assert await afmi.launch_local(main, 1) == [True]


async def test_split_and_dup_isolate_messages():
    async def main(comm):
        dup = await comm.dup()
        even = await comm.split(comm.rank % 2, key=-comm.rank)
        if comm.rank == 0:
            await dup.send("on dup", 1, tag=0)
            await comm.send("on world", 1, tag=0)
        if comm.rank == 1:
            world_msg = await comm.recv(0, 0)
            dup_msg = await dup.recv(0, 0)
            assert (world_msg, dup_msg) == ("on world", "on dup")
        total = await even.allreduce(comm.rank)
        none = await comm.split(None if comm.rank == 2 else 0)
        return even.rank, even.size, total, none is None, dup.rank == comm.rank

    out = await afmi.launch_local(main, 5)
    # evens {0,2,4} ordered by key=-rank -> 4,2,0 ; odds {1,3} -> 3,1
    assert [o[:3] for o in out] == [(2, 3, 6), (1, 2, 4), (1, 3, 6), (0, 2, 4), (0, 3, 6)]
    assert [o[3] for o in out] == [False, False, True, False, False]
    assert all(o[4] for o in out)


async def test_collectives_do_not_match_user_messages():
    async def main(comm):
        if comm.rank == 0:
            await comm.send("user", 1, tag=0)
        value = await comm.bcast("coll" if comm.rank == 0 else None)
        user = await comm.recv(0, tag=afmi.ANY_TAG) if comm.rank == 1 else None
        return value, user

    out = await afmi.launch_local(main, 2)
    assert out == [("coll", None), ("coll", "user")]


@pytest.mark.parametrize("spin", [0.0, 0.05])
async def test_spinning_receive_still_delivers_and_cancels_cleanly(spin):
    async def main(comm):
        if comm.rank == 0:
            task = asyncio.ensure_future(comm.recv(1, tag=1))
            await asyncio.sleep(0.01)  # cancelled while (possibly) spinning
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await comm.send("go", 1)
            return await comm.recv(1, tag=1, timeout=30)
        await comm.recv(0)
        await comm.send("kept", 0, tag=1)
        return None

    out = await afmi.launch_local(main, 2, config={"spin": spin})
    assert out[0] == "kept"
