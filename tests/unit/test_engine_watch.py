"""The engine watch (deployments.engine_watch) over a fake engine client: a dead engine, a stuck
one, and outputs that keep it alive; the exit path with os._exit and the process kill
replaced, so no test can end the test process or signal anything."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from deployments import engine_watch
from deployments.engine_watch import EngineLoad, EngineWatch
from deployments.guard import GuardState


class FakeCore:
    """The engine core client: ``get_output_async`` returns what ``outputs`` gets."""

    def __init__(self) -> None:
        self.outputs: asyncio.Queue | None = None
        self.calls = 0

    async def get_output_async(self) -> Any:
        self.calls += 1
        if self.outputs is None:
            self.outputs = asyncio.Queue()
        return await self.outputs.get()


class FakeEngine:
    """vLLM's AsyncLLM as the watch reads it."""

    def __init__(self) -> None:
        self.errored = False
        self.unfinished = 0
        self.engine_core = FakeCore()

    def get_num_unfinished_requests(self) -> int:
        return self.unfinished


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The watch's clock only (the event loop keeps the real one)."""
    fake = Clock()
    monkeypatch.setattr(engine_watch, "time", SimpleNamespace(monotonic=fake.monotonic))
    return fake


@pytest.fixture(autouse=True)
def no_exit(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """Records instead of exiting the process or killing its children."""
    record = SimpleNamespace(exits=[], kills=0)

    def kill_children() -> None:
        record.kills += 1

    monkeypatch.setattr(engine_watch.os, "_exit", record.exits.append)
    monkeypatch.setattr(engine_watch, "_kill_children", kill_children)
    return record


STALL = "made no progress for 5 s with requests waiting"


def test_a_healthy_engine_passes(clock: Clock) -> None:
    engine = FakeEngine()
    watch = EngineWatch(engine, "m", stall_s=5, guard=None)
    assert watch.check() is None
    engine.unfinished = 3
    clock.now += 5  # exactly stall_s: not yet
    assert watch.check() is None
    assert watch.failure is None


def test_an_idle_engine_is_never_stuck(clock: Clock) -> None:
    engine = FakeEngine()
    watch = EngineWatch(engine, "m", stall_s=5, guard=None)
    clock.now += 3600
    assert watch.check() is None
    assert watch.last_progress == clock.now  # idle time does not count
    engine.unfinished = 1
    clock.now += 4.9
    assert watch.check() is None
    clock.now += 0.2
    assert watch.check() == STALL


def test_a_dead_engine_is_reported_and_the_verdict_sticks(clock: Clock) -> None:
    engine = FakeEngine()
    watch = EngineWatch(engine, "m", stall_s=5, guard=None)
    engine.errored = True
    assert watch.check() == "died"
    engine.errored = False
    assert watch.check() == "died"  # a failed engine does not come back


def test_died_wins_over_stuck(clock: Clock) -> None:
    engine = FakeEngine()
    watch = EngineWatch(engine, "m", stall_s=5, guard=None)
    engine.unfinished, engine.errored = 1, True
    clock.now += 60
    assert watch.check() == "died"


def test_requests_without_output_for_stall_s_are_stuck(clock: Clock) -> None:
    engine = FakeEngine()
    watch = EngineWatch(engine, "m", stall_s=5, guard=None)
    engine.unfinished = 2
    clock.now += 5.001
    assert watch.check() == STALL
    engine.unfinished = 0  # the verdict sticks even if the requests go away
    assert watch.check() == STALL


def test_fractional_stall_s_in_the_message(clock: Clock) -> None:
    engine = FakeEngine()
    engine.unfinished = 1
    watch = EngineWatch(engine, "m", stall_s=0.25, guard=None)
    clock.now += 0.3
    assert watch.check() == "made no progress for 0.25 s with requests waiting"


STATS = SimpleNamespace(num_running_reqs=3, num_waiting_reqs=2, kv_cache_usage=0.25)


class FakeLoggers:
    """vLLM's StatLoggerManager: record() gets each step's stats."""

    def __init__(self) -> None:
        self.steps = 0

    def record(self, engine_idx: int = 0, scheduler_stats: Any = None,
               iteration_stats: Any = None, mm_cache_stats: Any = None) -> None:  # fmt: skip
        self.steps += 1


def test_the_engines_ttft_p95_is_over_the_last_window(clock: Clock) -> None:
    engine = FakeEngine()
    engine.logger_manager = FakeLoggers()
    watch = EngineWatch(engine, "m", stall_s=5, guard=None)
    watch._record_first_tokens()
    assert watch.load().ttft_p95 is None  # no first token yet
    old = SimpleNamespace(time_to_first_tokens_iter=[9.0] * 10, finished_requests=[])
    engine.logger_manager.record(engine_idx=0, iteration_stats=old)
    clock.now += engine_watch.TTFT_WINDOW_S + 1  # the slow ones age out
    for ttft in range(1, 21):  # 20 first tokens of 0.01 .. 0.20 s
        step = SimpleNamespace(time_to_first_tokens_iter=[ttft / 100], finished_requests=[])
        engine.logger_manager.record(engine_idx=0, iteration_stats=step)
    engine.logger_manager.record(engine_idx=0, iteration_stats=None)  # a step without stats
    assert watch.load().ttft_p95 == 0.19  # the 19th of 20
    assert engine.logger_manager.steps == 22  # every step still reaches vLLM's loggers


def test_load_before_any_step_is_zero(clock: Clock) -> None:
    engine = FakeEngine()
    engine.unfinished = 4
    assert EngineWatch(engine, "m", stall_s=5, guard=None).load() == EngineLoad(0, 0, 0.0)


def test_an_output_resets_the_stall_clock(clock: Clock, no_exit: SimpleNamespace) -> None:
    engine = FakeEngine()
    original = engine.engine_core.get_output_async
    watch = EngineWatch(engine, "m", stall_s=5, guard=None)

    async def scenario() -> None:
        watch.start()
        try:
            wrapped = engine.engine_core.get_output_async
            assert wrapped != original  # replaced by the recording wrapper
            engine.unfinished = 1
            for step in range(3):
                clock.now += 4
                batch = SimpleNamespace(scheduler_stats=None if step else STATS)
                waiting = asyncio.create_task(wrapped())
                await asyncio.sleep(0)
                clock.now += 0.5  # the output arrives a little later
                engine.engine_core.outputs.put_nowait(batch)
                assert await waiting is batch  # outputs pass through unchanged
                assert watch.last_progress == clock.now
                assert watch.check() is None  # 13.5 s busy in all, never 5 s without output
            # The last scheduler stats count (a step without them keeps them).
            assert watch.load() == EngineLoad(running=3, waiting=2, kv_cache=0.25)
            engine.unfinished = 0  # an idle engine sends no steps: nothing runs
            assert watch.load() == EngineLoad(0, 0, 0.0)
            engine.unfinished = 1
            clock.now += 5.1
            assert watch.check() == STALL
            assert engine.engine_core.calls == 3
        finally:
            watch._task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await watch._task

    asyncio.run(asyncio.wait_for(scenario(), 5))
    assert no_exit.exits == [] and no_exit.kills == 0


@pytest.fixture
def fast_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_watch, "POLL_S", 0.01)
    monkeypatch.setattr(engine_watch, "FLUSH_S", 1.0)


async def until(predicate: Any) -> None:
    async with asyncio.timeout(2):
        while not predicate():
            await asyncio.sleep(0.005)


def test_a_dead_engine_makes_the_replica_unavailable_then_exit(
    fast_watch: None, no_exit: SimpleNamespace
) -> None:
    engine = FakeEngine()
    guard = GuardState(timeout_s=60, retry_after_s=2)
    watch = EngineWatch(engine, "tiny", stall_s=60, guard=guard)

    async def scenario() -> None:
        watch.start()
        await asyncio.sleep(0.05)
        assert guard.unavailable is None and not watch._task.done()
        guard.admitted = 1  # a request still being answered
        engine.errored = True
        await until(lambda: guard.unavailable is not None)
        assert guard.unavailable == (
            "the engine of model tiny died; the model is restarting, retry later"
        )
        await asyncio.sleep(0.1)
        assert no_exit.exits == [] and no_exit.kills == 0  # waits for the answer in flight
        guard.admitted = 0
        await asyncio.wait_for(watch._task, 1)

    asyncio.run(asyncio.wait_for(scenario(), 5))
    assert no_exit.exits == [1]
    assert no_exit.kills == 1  # only the leftover workers: the engine is already dead


def test_a_stuck_engine_is_killed_then_the_replica_exits(
    fast_watch: None, no_exit: SimpleNamespace
) -> None:
    engine = FakeEngine()
    guard = GuardState(timeout_s=60, retry_after_s=2)
    watch = EngineWatch(engine, "tiny", stall_s=0.05, guard=guard)

    async def scenario() -> None:
        engine.unfinished = 1
        watch.start()
        await asyncio.wait_for(watch._task, 2)

    asyncio.run(asyncio.wait_for(scenario(), 5))
    assert guard.unavailable == (
        "the engine of model tiny made no progress for 0.05 s with requests waiting; the model "
        "is restarting, retry later"
    )
    assert no_exit.exits == [1]
    assert no_exit.kills == 2  # the stuck engine first, then what outlived it


def test_without_a_guard_the_replica_exits_after_the_flush_time(
    fast_watch: None, no_exit: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_watch, "FLUSH_S", 0.1)
    engine = FakeEngine()
    engine.errored = True
    watch = EngineWatch(engine, "tiny", stall_s=60, guard=None)

    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        began = loop.time()
        watch.start()
        await asyncio.wait_for(watch._task, 2)
        return loop.time() - began

    elapsed = asyncio.run(scenario())
    assert elapsed >= 0.1
    assert (no_exit.exits, no_exit.kills) == ([1], 1)
