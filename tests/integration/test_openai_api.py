"""The OpenAI API end to end: official client, real HTTP, Ray Serve, two vLLM engines."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from tests.integration.conftest import serving

ENGINE = {"max_model_len": 256}
MODELS = ["tiny-a", "tiny-b"]


@pytest.fixture(scope="module")
def api_url(tiny_model_dir: Path) -> Iterator[str]:
    models = [{"id": m, "source": str(tiny_model_dir), "engine_args": ENGINE} for m in MODELS]
    with serving(models, tiny_model_dir.parent) as url:
        yield url


@pytest.fixture(scope="module")
def client(api_url: str) -> OpenAI:
    return OpenAI(base_url=api_url, api_key="unused", max_retries=0, timeout=120)


def chat(client: OpenAI, model: str = "tiny-a", **kwargs):
    messages = [{"role": "user", "content": "Tell me about the cluster."}]
    return client.chat.completions.create(model=model, messages=messages, **kwargs)


def test_lists_both_models(client: OpenAI) -> None:
    assert sorted(m.id for m in client.models.list().data) == MODELS
    assert client.models.retrieve("tiny-b").id == "tiny-b"


@pytest.mark.parametrize("model", MODELS)
def test_routes_each_model(client: OpenAI, model: str) -> None:
    reply = chat(client, model, max_tokens=4, temperature=0)
    assert reply.model == model
    assert reply.choices[0].message.role == "assistant"


def test_completion_usage_and_length(client: OpenAI) -> None:
    reply = client.completions.create(model="tiny-a", prompt="The cluster", max_tokens=7)
    choice = reply.choices[0]
    assert choice.finish_reason == "length"
    assert reply.usage.completion_tokens == 7
    assert reply.usage.prompt_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 7


def test_chat_usage_and_length(client: OpenAI) -> None:
    reply = chat(client, max_tokens=5)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 5


def test_streaming_completion_with_usage(client: OpenAI) -> None:
    kwargs = {"model": "tiny-b", "prompt": "A replica", "max_tokens": 6, "temperature": 0}
    chunks = list(
        client.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs)
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert text == client.completions.create(**kwargs).choices[0].text


def test_streaming_chat_with_usage(client: OpenAI) -> None:
    stream = chat(client, max_tokens=6, temperature=0, stream=True,
                  stream_options={"include_usage": True})  # fmt: skip
    chunks = list(stream)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage.completion_tokens == 6
    assert content == chat(client, max_tokens=6, temperature=0).choices[0].message.content


def test_stop_sequence(client: OpenAI) -> None:
    # Seeded sampling is repeatable and, unlike greedy decoding of random weights, varied.
    kwargs = {"model": "tiny-a", "prompt": "Ray Serve", "temperature": 1.0, "seed": 7,
              "max_tokens": 32}  # fmt: skip
    full = client.completions.create(**kwargs).choices[0].text
    # Stop at a character whose first occurrence is past the start of the text.
    cut, stop = next(
        (i, ch) for i, ch in enumerate(full) if i > 0 and ch.isalnum() and full.find(ch) == i
    )
    choice = client.completions.create(stop=[stop], **kwargs).choices[0]
    assert choice.finish_reason == "stop"
    assert choice.text == full[:cut]


def test_n_choices(client: OpenAI) -> None:
    reply = chat(client, n=3, max_tokens=4, temperature=1.0, seed=1)
    assert sorted(c.index for c in reply.choices) == [0, 1, 2]


def test_seed_makes_sampling_repeatable(client: OpenAI) -> None:
    texts = [chat(client, max_tokens=12, temperature=1.0, seed=1234).choices[0].message.content
             for _ in range(2)]  # fmt: skip
    assert texts[0] == texts[1] and texts[0]


def test_health(api_url: str) -> None:
    response = httpx.get(api_url.removesuffix("/v1") + "/health", timeout=30)
    assert response.status_code == 200 and response.json()["status"] == "ok"


@pytest.mark.parametrize(
    ("kwargs", "error", "param"),
    [
        ({"model": "nope"}, openai.NotFoundError, "model"),
        ({"temperature": -1}, openai.BadRequestError, "temperature"),
        ({"top_p": 1.5}, openai.BadRequestError, "top_p"),
        ({"n": 0}, openai.BadRequestError, None),
        ({"max_tokens": 100_000}, openai.BadRequestError, "max_tokens"),
        (
            {"extra_body": {"messages": [{"role": "user", "content": "go " * 400}]}},
            openai.BadRequestError,
            None,
        ),  # fmt: skip
        ({"max_tokens": "ten"}, openai.BadRequestError, "max_tokens"),
        ({"stream": True, "temperature": -1}, openai.BadRequestError, "temperature"),
    ],
)
def test_bad_requests_get_openai_errors(
    client: OpenAI, kwargs: dict, error: type[openai.APIStatusError], param: str | None
) -> None:
    kwargs = {"model": "tiny-a", "max_tokens": 4, **kwargs}
    with pytest.raises(error) as info:
        chat(client, **kwargs)
    body = info.value.body
    assert set(body) >= {"message", "type", "param", "code"}
    assert body["code"] == info.value.status_code
    if param:
        assert body["param"] == param


@pytest.mark.parametrize(
    "content",
    [b'{"model": "tiny-a", "prompt": ', b"not json", b'{"model": "tiny-a", "prompt": {"a": 1}}'],
)
def test_malformed_json_is_400(api_url: str, content: bytes) -> None:
    response = httpx.post(f"{api_url}/completions", content=content, timeout=30,
                          headers={"content-type": "application/json"})  # fmt: skip
    assert response.status_code == 400
    assert response.json()["error"]["code"] == 400


def test_prompt_longer_than_context_is_400(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="tiny-b", prompt="12345 " * 300, max_tokens=4)
    assert "context" in info.value.message


def test_server_survives_errors(client: OpenAI) -> None:
    assert chat(client, max_tokens=2).choices[0].finish_reason == "length"


def test_32_concurrent_streams_complete(api_url: str) -> None:
    async def one(client: AsyncOpenAI, i: int) -> int:
        stream = await client.chat.completions.create(
            model=MODELS[i % 2], max_tokens=16, stream=True,
            messages=[{"role": "user", "content": f"Request number {i}"}],
            stream_options={"include_usage": True},
        )  # fmt: skip
        usage = None
        async for chunk in stream:
            usage = chunk.usage or usage
        return usage.completion_tokens

    async def all_of_them() -> list[int]:
        async with AsyncOpenAI(base_url=api_url, api_key="unused", max_retries=0,
                               timeout=300) as client:  # fmt: skip
            return await asyncio.gather(*(one(client, i) for i in range(32)))

    counts = asyncio.run(all_of_them())
    assert len(counts) == 32 and all(0 < c <= 16 for c in counts)
