"""Coarse deadlines: slots fire late never early, met ones never fire, cancels balance."""

from __future__ import annotations

import asyncio

import pytest

from eventbus import HandlerTimeout, Message
from eventbus.deadlines import Deadlines, run_within

MESSAGE = Message("t", b"{}")


async def test_a_deadline_fires_once_not_early_and_met_ones_never() -> None:
    loop = asyncio.get_running_loop()
    fired: list[tuple[str, float]] = []
    deadlines = Deadlines(loop, lambda key, started: fired.append((key, loop.time() - started)))
    for key in ("a", "b", "c"):
        slot = deadlines.add(0.05, key, loop.time())
    del slot["b"]  # met in time
    await asyncio.sleep(0.15)
    assert sorted(key for key, _ in fired) == ["a", "c"]
    assert all(waited >= 0.05 for _, waited in fired)


async def test_run_within_turns_the_deadline_into_handler_timeout() -> None:
    async def hang(message: Message) -> None:
        await asyncio.sleep(10)

    task = asyncio.current_task()
    assert task is not None
    with pytest.raises(HandlerTimeout, match=r"did not finish within 0\.02s"):
        await run_within(0.02, hang, MESSAGE)
    assert task.cancelling() == 0, "the deadline's cancel must be taken back"
    assert await run_within(0.02, _echo, MESSAGE) is MESSAGE  # the task goes on normally
    await asyncio.sleep(0.05)  # the met deadline's slot fires: nothing is cancelled
    assert task.cancelling() == 0


async def test_a_handler_that_swallows_the_cancel_still_balances_it() -> None:
    async def stubborn(message: Message) -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return "kept going"
        return "slept"

    task = asyncio.current_task()
    assert task is not None
    assert await run_within(0.02, stubborn, MESSAGE) == "kept going"
    assert task.cancelling() == 0


async def test_an_outside_cancel_is_not_a_timeout() -> None:
    started = asyncio.Event()

    async def wait(message: Message) -> None:
        started.set()
        await asyncio.sleep(10)

    runner = asyncio.ensure_future(run_within(5.0, wait, MESSAGE))
    await started.wait()
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner


async def _echo(message: Message) -> Message:
    return message


async def test_far_deadlines_share_coarser_slots_at_most_one_percent_late() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop, lambda key, value: None)
    for delay in (0.05, 5.0, 30.0, 3600.0, 86400.0):
        slot = deadlines.add(delay, delay, None)
        ((resolution, index),) = [k for k, v in deadlines._slots.items() if v is slot]
        late = resolution * index - (loop.time() + delay)
        assert 0 <= late <= max(0.01, delay / 100)
    before = len(deadlines._slots)
    for i in range(100):  # a second's worth of hour-long deadlines
        deadlines.add(3600.0 + i * 0.01, ("hour", i), None)
    assert len(deadlines._slots) - before <= 2, "they share a slot or two, not 100 timers"
