"""The host's sync slots: a bound, first come first served, resizable."""

from __future__ import annotations

import asyncio

from mirrorhook.slots import SyncSlots


async def hold_until(slots: SyncSlots, release: asyncio.Event, entered: list[int], n: int) -> None:
    """Take a slot, note ``n`` as having entered, keep the slot until ``release``."""
    async with slots.hold():
        entered.append(n)
        await release.wait()


async def test_slots_serve_in_order_and_never_exceed_their_size() -> None:
    slots = SyncSlots(2)
    order: list[int] = []
    running = 0
    peak = 0
    release = asyncio.Event()

    async def sync(number: int) -> None:
        nonlocal running, peak
        async with slots.hold():
            order.append(number)
            running += 1
            peak = max(peak, running)
            await release.wait()
            running -= 1

    tasks = [asyncio.create_task(sync(number)) for number in range(6)]
    await asyncio.sleep(0.01)
    assert (order, slots.waiting) == ([0, 1], 4)
    release.set()
    async with asyncio.timeout(5):  # a slot never given back fails, not hangs
        await asyncio.gather(*tasks)
    assert order == list(range(6))
    assert peak == 2


async def test_growing_lets_waiters_in_and_shrinking_lets_holders_finish() -> None:
    slots = SyncSlots(1)
    release = asyncio.Event()
    entered: list[int] = []
    tasks = [asyncio.create_task(hold_until(slots, release, entered, n)) for n in range(3)]
    await asyncio.sleep(0.01)
    assert entered == [0]
    slots.resize(3)
    await asyncio.sleep(0.01)
    assert entered == [0, 1, 2]
    slots.resize(1)
    assert slots.in_use == 3  # nobody is interrupted
    release.set()
    async with asyncio.timeout(5):  # a slot never given back fails, not hangs
        await asyncio.gather(*tasks)
    assert slots.in_use == 0


async def test_a_waiter_cancelled_gives_its_turn_on() -> None:
    slots = SyncSlots(1)
    release = asyncio.Event()
    entered: list[int] = []
    first, second, third = (
        asyncio.create_task(hold_until(slots, release, entered, n)) for n in range(3)
    )
    await asyncio.sleep(0.01)
    second.cancel()
    release.set()
    async with asyncio.timeout(5):
        await asyncio.gather(first, third)
    assert entered == [0, 2]
    assert slots.in_use == 0
