"""`caught_up` (services/aggregate_follower.py) returns only once the callback has finished the
last event delivered, on a real ordered consumer: the job dispatcher's callback awaits (it may read
the store), and a purge relies on every job submitted before it being in the queue."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from events.store import JetStreamEventStore
from events.subjects import STREAM
from services.aggregate_follower import Handled, caught_up


async def test_caught_up_waits_for_the_callback_to_finish_the_last_event(nc: NatsClient) -> None:
    await JetStreamEventStore(nc).ensure_stream()
    js = nc.jetstream()
    for n in range(3):
        await js.publish(f"ev.followtest.a{n}.Happened", b"{}")
    handled = Handled()
    done: list[str] = []
    last_started = asyncio.Event()
    release = asyncio.Event()

    async def callback(msg: Msg) -> None:
        if len(done) == 2:
            last_started.set()
            await release.wait()  # the last event takes a while (a read of the store, say)
        done.append(msg.subject)
        handled.mark(msg)

    sub = await js.subscribe(
        "ev.followtest.>",
        stream=STREAM,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.ALL,
        cb=callback,
    )
    try:
        await asyncio.wait_for(last_started.wait(), 5)
        waiting = asyncio.create_task(caught_up(sub, handled, "test"))
        await asyncio.sleep(1.0)
        # Nothing is pending on the server or queued in the client, yet the last event is not
        # folded: "caught up" would be a lie now.
        assert not waiting.done(), "caught up while the callback was still on the last event"
        release.set()
        await asyncio.wait_for(waiting, 5)
        assert len(done) == 3
    finally:
        release.set()
        await sub.unsubscribe()
