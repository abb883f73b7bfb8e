"""DeadlineBuckets: shared timers for many deadlines."""

from __future__ import annotations

import asyncio

import rpc
from rpc import DeadlineBuckets


async def test_deadlines_fire_never_early_and_boundedly_late() -> None:
    loop = asyncio.get_running_loop()
    fired: dict[int, float] = {}
    batch_of: dict[int, int] = {}
    batches = 0
    done = asyncio.Event()
    delays = {0: 0.01, 1: 0.03, 2: 0.2, 3: 0.2, 4: 0.5}

    def fire(items: list[int]) -> None:
        nonlocal batches
        batches += 1
        for i in items:
            fired[i] = loop.time()
            batch_of[i] = batches
        if len(fired) == len(delays):
            done.set()

    buckets: DeadlineBuckets[int] = DeadlineBuckets(loop, fire, granularity=0.005)
    start = loop.time()
    for i, delay in delays.items():
        buckets.add(delay, i)
    await asyncio.wait_for(done.wait(), 5)
    for i, delay in delays.items():
        late = fired[i] - start - delay
        assert late >= -0.001, f"item {i} fired {-late:.4f} s early"
        # Slot width max(g, delay/16) plus one g, plus scheduling slack.
        assert late <= max(0.005, delay / 16) + 0.005 + 0.05, f"item {i} {late:.4f} s late"
    # Two deadlines due together share one timer.
    assert batch_of[2] == batch_of[3]


async def test_long_deadlines_share_few_timers() -> None:
    loop = asyncio.get_running_loop()
    buckets: DeadlineBuckets[int] = DeadlineBuckets(loop, lambda items: None, granularity=0.005)
    start = loop.time()
    i = 0
    # 1 s deadlines added over 100 ms: 5 ms slots would need 20 timers.
    while loop.time() - start < 0.1:
        buckets.add(1.0, i)
        i += 1
        await asyncio.sleep(0.002)
    assert len(buckets._handles) <= 5
    buckets.cancel_all()
    assert not buckets._handles


async def test_loop_deadlines_is_one_shared_set_per_loop() -> None:
    loop = asyncio.get_running_loop()
    shared = rpc.loop_deadlines(loop)
    assert rpc.loop_deadlines(loop) is shared
    fired: list[str] = []
    done = asyncio.Event()

    def expire(item: str) -> None:
        fired.append(item)
        if len(fired) == 2:
            done.set()

    # Many owners (connections, channels) share the slots: one timer here.
    shared.add(0.02, (expire, "a"))
    shared.add(0.02, (expire, "b"))
    await asyncio.wait_for(done.wait(), 5)
    assert sorted(fired) == ["a", "b"]
    other = asyncio.new_event_loop()
    try:
        assert rpc.loop_deadlines(other) is not shared
    finally:
        other.close()
