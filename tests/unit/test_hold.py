"""The shared ingress's hold on a model's handle (deployments.ingress.HeldHandle): a call no
replica takes within the hold gets a 503 with Retry-After and is cancelled; a call a replica
takes streams through untouched. Fake handles with the DeploymentResponseGenerator's shape."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from deployments.errors import APIError
from deployments.ingress import HeldHandle


class FakeResponse:
    """A streaming handle call: assigned to a replica after ``assign_s`` (None: never)."""

    def __init__(self, assign_s: float | None, items: list[Any]) -> None:
        self.assign_s, self.items, self.cancelled = assign_s, items, False

    async def _fetch_future_result_async(self) -> None:
        if self.assign_s is None:
            await asyncio.Event().wait()
        await asyncio.sleep(self.assign_s)

    def cancel(self) -> None:
        self.cancelled = True

    def __aiter__(self) -> Any:
        return self._items()

    async def _items(self) -> Any:
        for item in self.items:
            yield item


class FakeHandle:
    def __init__(self, response: FakeResponse) -> None:
        self.response, self.options_seen = response, {}
        self.chat = self  # the method; .remote() makes the call

    def options(self, **kwargs: Any) -> FakeHandle:
        self.options_seen = kwargs
        return self

    def remote(self, *args: Any) -> FakeResponse:
        return self.response


async def collect(handle: HeldHandle) -> list[Any]:
    return [item async for item in handle.options(session_id="s").chat.remote("body")]


def test_a_call_a_replica_takes_streams_through() -> None:
    response = FakeResponse(0.05, ["a", "b", "c"])
    fake = FakeHandle(response)
    assert asyncio.run(collect(HeldHandle(fake, 1.0, 3))) == ["a", "b", "c"]
    assert fake.options_seen == {"session_id": "s"} and not response.cancelled


def test_a_call_no_replica_takes_in_time_gets_503_and_is_cancelled() -> None:
    response = FakeResponse(None, ["never"])
    with pytest.raises(APIError) as caught:
        asyncio.run(collect(HeldHandle(FakeHandle(response), 0.1, 3)))
    assert caught.value.status == 503 and caught.value.retry_after_s == 3
    assert "within 0.1 s" in caught.value.message and response.cancelled
