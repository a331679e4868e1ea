"""Per-request caps (deployments.limits): each violation is a 400 naming its parameter, checked
where vLLM renders a request. Plain objects stand in for vLLM's request models and serving
objects (the same attributes and methods), and a few cases use vLLM's own request classes."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from deployments.config import RequestLimits
from deployments.limits import (
    DEFAULT_REQUEST_CONTEXTS,
    Violation,
    check_rendered,
    check_sampling,
    enforce,
)

CONTEXT = 100


def completion(n: int | None = None, max_tokens: int | None = 16, **extra: Any) -> Any:
    """A stand-in for vLLM's CompletionRequest: `best_of` and other extras in model_extra."""
    return SimpleNamespace(n=n, max_tokens=max_tokens, model_extra=extra, **extra)


def chat(
    n: int | None = None,
    max_tokens: int | None = None,
    max_completion_tokens: int | None = None,
    **extra: Any,
) -> Any:
    """A stand-in for vLLM's ChatCompletionRequest."""
    return SimpleNamespace(
        n=n,
        max_tokens=max_tokens,
        max_completion_tokens=max_completion_tokens,
        model_extra=extra,
        **extra,
    )


# --- check_sampling ---


def test_sampling_within_the_defaults_passes() -> None:
    limits = RequestLimits()
    assert check_sampling(completion(), limits, CONTEXT) is None
    assert check_sampling(completion(n=16, best_of=16, max_tokens=CONTEXT), limits, CONTEXT) is None
    assert check_sampling(chat(max_completion_tokens=CONTEXT), limits, CONTEXT) is None


@pytest.mark.parametrize("n", [None, 1, 4])
def test_n_up_to_the_cap_passes(n: int | None) -> None:
    assert check_sampling(completion(n=n), RequestLimits(max_n=4), CONTEXT) is None


@pytest.mark.parametrize("request_", [completion(n=5), chat(n=5)])
def test_n_over_the_cap_names_n(request_: Any) -> None:
    violation = check_sampling(request_, RequestLimits(max_n=4), CONTEXT)
    assert violation == Violation("n=5 is above this model's limit of 4", "n")


def test_best_of_over_the_cap_names_best_of() -> None:
    limits = RequestLimits(max_best_of=3)
    assert check_sampling(completion(best_of=3), limits, CONTEXT) is None
    assert check_sampling(completion(best_of=4), limits, CONTEXT) == Violation(
        "best_of=4 is above this model's limit of 3", "best_of"
    )


@pytest.mark.parametrize("best_of", [0, -1, 2.5, 2.0, "2", True, False, [2]])
def test_best_of_must_be_a_positive_int(best_of: Any) -> None:
    violation = check_sampling(completion(best_of=best_of), RequestLimits(), CONTEXT)
    assert violation == Violation("best_of must be a positive integer", "best_of")


def test_best_of_only_in_model_extra_is_checked() -> None:
    """A request model without a `best_of` attribute (vLLM keeps it as an extra field)."""
    request = SimpleNamespace(n=None, max_tokens=None, model_extra={"best_of": 9})
    violation = check_sampling(request, RequestLimits(max_best_of=8), CONTEXT)
    assert violation == Violation("best_of=9 is above this model's limit of 8", "best_of")
    request = SimpleNamespace(n=None, max_tokens=None, model_extra=None)
    assert check_sampling(request, RequestLimits(), CONTEXT) is None


def test_n_is_checked_before_best_of_and_max_tokens() -> None:
    request = completion(n=99, best_of=99, max_tokens=10_000)
    assert check_sampling(request, RequestLimits(max_n=2), CONTEXT).param == "n"
    request = completion(best_of=99, max_tokens=10_000)
    assert check_sampling(request, RequestLimits(max_best_of=2), CONTEXT).param == "best_of"


@pytest.mark.parametrize(
    ("request_", "message", "param"),
    [
        (
            completion(max_tokens=51),
            "max_tokens=51 is above this model's limit of 50",
            "max_tokens",
        ),
        (chat(max_tokens=51), "max_tokens=51 is above this model's limit of 50", "max_tokens"),
        (
            chat(max_completion_tokens=51),
            "max_completion_tokens=51 is above this model's limit of 50",
            "max_completion_tokens",
        ),
        # Chat prefers max_completion_tokens, as OpenAI (and vLLM) do.
        (
            chat(max_tokens=10, max_completion_tokens=51),
            "max_completion_tokens=51 is above this model's limit of 50",
            "max_completion_tokens",
        ),
    ],
)
def test_max_tokens_over_the_cap_names_the_parameter_used(
    request_: Any, message: str, param: str
) -> None:
    assert check_sampling(request_, RequestLimits(max_tokens=50), CONTEXT) == Violation(
        message, param
    )


def test_max_completion_tokens_overrides_max_tokens() -> None:
    request = chat(max_tokens=51, max_completion_tokens=50)
    assert check_sampling(request, RequestLimits(max_tokens=50), CONTEXT) is None


def test_max_tokens_cap_defaults_to_the_context_length() -> None:
    limits = RequestLimits()
    assert check_sampling(completion(max_tokens=CONTEXT), limits, CONTEXT) is None
    assert check_sampling(completion(max_tokens=CONTEXT + 1), limits, CONTEXT) == Violation(
        f"max_tokens={CONTEXT + 1} is above this model's limit of {CONTEXT}", "max_tokens"
    )


# --- check_rendered ---


def test_a_prompt_over_the_cap_names_the_prompt_parameter() -> None:
    limits = RequestLimits(max_prompt_tokens=10)
    assert check_rendered(completion(max_tokens=1), [10, 3], limits, CONTEXT, "prompt") is None
    assert check_rendered(completion(max_tokens=1), [3, 11], limits, CONTEXT, "prompt") == (
        Violation("the prompt has 11 tokens, above this model's limit of 10", "prompt")
    )
    assert check_rendered(chat(), [11], limits, CONTEXT, "messages") == Violation(
        "the prompt has 11 tokens, above this model's limit of 10", "messages"
    )


def test_the_prompt_cap_defaults_to_the_context_length() -> None:
    request = completion(max_tokens=1)
    assert check_rendered(request, [CONTEXT], RequestLimits(), CONTEXT, "prompt") is None
    assert check_rendered(request, [CONTEXT + 1], RequestLimits(), CONTEXT, "prompt") == (
        Violation(
            f"the prompt has {CONTEXT + 1} tokens, above this model's limit of {CONTEXT}", "prompt"
        )
    )


def test_no_prompts_pass() -> None:
    assert check_rendered(completion(n=16), [], RequestLimits(), CONTEXT, "prompt") is None


def over_budget(total: int, shape: str, budget: int, param: str) -> str:
    return (
        f"this request may process {total} tokens ({shape}), above this model's limit of "
        f"{budget}; send fewer or shorter prompts, or lower n or {param}"
    )


def test_the_budget_defaults_to_four_contexts() -> None:
    assert DEFAULT_REQUEST_CONTEXTS == 4
    limits = RequestLimits()
    # Without max_tokens each completion may fill the context left after its prompt:
    # prompt + n x (context - prompt).
    assert check_rendered(chat(n=4), [0], limits, CONTEXT, "messages") is None  # 400
    assert check_rendered(chat(n=4), [60], limits, CONTEXT, "messages") is None  # 220
    assert check_rendered(chat(n=5), [25], limits, CONTEXT, "messages") is None  # 400
    violation = check_rendered(chat(n=5), [24], limits, CONTEXT, "messages")  # 24 + 380
    assert violation == Violation(
        over_budget(
            404,
            "1 prompt(s) of up to 24 tokens, each generating n=5 x max_tokens=the rest of the "
            "context",
            400,
            "max_tokens",
        ),
        "n",
    )


def test_the_budget_with_max_tokens_counts_every_prompt_and_its_tokens() -> None:
    limits = RequestLimits()
    request = completion(max_tokens=40)
    assert check_rendered(request, [10] * 8, limits, CONTEXT, "prompt") is None  # 8 x 50
    violation = check_rendered(request, [10] * 7 + [11], limits, CONTEXT, "prompt")
    assert violation == Violation(
        over_budget(
            401,
            "8 prompt(s) of up to 11 tokens, each generating n=1 x max_tokens=40",
            400,
            "max_tokens",
        ),
        "max_tokens",
    )


def test_the_budget_without_max_tokens_counts_a_context_per_prompt() -> None:
    limits = RequestLimits()
    request = completion(max_tokens=None)
    assert check_rendered(request, [10] * 4, limits, CONTEXT, "prompt") is None
    assert check_rendered(request, [CONTEXT] * 4, limits, CONTEXT, "prompt") is None
    assert check_rendered(request, [10] * 5, limits, CONTEXT, "prompt") == Violation(
        over_budget(
            500,
            "5 prompt(s) of up to 10 tokens, each generating n=1 x max_tokens=the rest of the "
            "context",
            400,
            "max_tokens",
        ),
        "max_tokens",
    )


def test_the_budget_names_max_completion_tokens_when_chat_used_it() -> None:
    limits = RequestLimits(max_request_tokens=100)
    request = chat(max_tokens=1, max_completion_tokens=95)
    assert check_rendered(request, [5], limits, CONTEXT, "messages") is None
    assert check_rendered(request, [6], limits, CONTEXT, "messages") == Violation(
        over_budget(
            101,
            "1 prompt(s) of up to 6 tokens, each generating n=1 x max_completion_tokens=95",
            100,
            "max_completion_tokens",
        ),
        "max_completion_tokens",
    )


def test_a_set_max_request_tokens_replaces_the_default() -> None:
    limits = RequestLimits(max_request_tokens=100)
    assert check_rendered(chat(n=2, max_tokens=45), [10], limits, CONTEXT, "messages") is None
    violation = check_rendered(chat(n=2, max_tokens=46), [10], limits, CONTEXT, "messages")
    assert violation is not None and violation.param == "n"
    assert "process 102 tokens" in violation.message and "limit of 100;" in violation.message
    # A large budget lets through what the default (4 contexts) refuses.
    assert check_rendered(chat(n=16), [0], RequestLimits(), CONTEXT, "messages") is not None
    big = RequestLimits(max_request_tokens=16 * CONTEXT)
    assert check_rendered(chat(n=16), [0], big, CONTEXT, "messages") is None


def test_a_prompt_longer_than_the_context_counts_only_its_tokens() -> None:
    """max(context - prompt, 0): an over-long prompt allowed by max_prompt_tokens leaves no
    room to generate, so only the prompt counts."""
    limits = RequestLimits(max_prompt_tokens=2 * CONTEXT, max_request_tokens=150)
    assert check_rendered(chat(n=3), [150], limits, CONTEXT, "messages") is None
    violation = check_rendered(chat(n=3), [151], limits, CONTEXT, "messages")
    assert violation is not None and "process 151 tokens" in violation.message


def test_prompts_that_alone_exceed_the_budget_name_the_prompt() -> None:
    """Lowering n or max_tokens cannot help then; the error says what can."""
    limits = RequestLimits(max_request_tokens=400)
    violation = check_rendered(completion(max_tokens=1), [90] * 5, limits, CONTEXT, "prompt")
    assert violation is not None and violation.param == "prompt"
    violation = check_rendered(completion(n=4, max_tokens=20), [90] * 4, limits, CONTEXT, "prompt")
    assert violation is not None and violation.param == "n"  # 360 of prompts: n can help


def test_allowed_token_ids_with_a_grammar_is_refused() -> None:
    """Together vLLM fails them mid-generation with a 500 (the schema fuzz found it)."""
    json_format = SimpleNamespace(type="json_object")
    request = completion(allowed_token_ids=[0], response_format=json_format)
    violation = check_sampling(request, RequestLimits(), CONTEXT)
    assert violation is not None and violation.param == "allowed_token_ids"
    text = completion(allowed_token_ids=[0], response_format=SimpleNamespace(type="text"))
    assert check_sampling(text, RequestLimits(), CONTEXT) is None
    alone = completion(allowed_token_ids=[0], structured_outputs=None, response_format=None)
    assert check_sampling(alone, RequestLimits(), CONTEXT) is None


# --- vLLM's own request models ---


@pytest.fixture(scope="module")
def vllm_requests() -> tuple[type, type]:
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest

    return CompletionRequest, ChatCompletionRequest


@pytest.mark.filterwarnings("ignore:max_tokens is deprecated")
def test_checks_read_vllms_request_models(vllm_requests: tuple[type, type]) -> None:
    completion_cls, chat_cls = vllm_requests
    limits = RequestLimits(max_n=4, max_best_of=3, max_tokens=50)
    messages = [{"role": "user", "content": "hi"}]

    ok = completion_cls(model="m", prompt="hi")  # max_tokens defaults to 16
    assert check_sampling(ok, limits, CONTEXT) is None
    assert check_sampling(completion_cls(model="m", prompt="hi", n=5), limits, CONTEXT).param == "n"
    # best_of is not a field of vLLM's model: it arrives as an extra.
    best_of = completion_cls(model="m", prompt="hi", best_of=4)
    assert check_sampling(best_of, limits, CONTEXT) == Violation(
        "best_of=4 is above this model's limit of 3", "best_of"
    )
    bad_best_of = completion_cls(model="m", prompt="hi", best_of=0)
    assert check_sampling(bad_best_of, limits, CONTEXT).param == "best_of"
    too_long = completion_cls(model="m", prompt="hi", max_tokens=51)
    assert check_sampling(too_long, limits, CONTEXT).param == "max_tokens"

    both = chat_cls(model="m", messages=messages, max_tokens=1, max_completion_tokens=51)
    assert check_sampling(both, limits, CONTEXT) == Violation(
        "max_completion_tokens=51 is above this model's limit of 50", "max_completion_tokens"
    )
    legacy = chat_cls(model="m", messages=messages, max_tokens=51)
    assert check_sampling(legacy, limits, CONTEXT).param == "max_tokens"
    unbounded = chat_cls(model="m", messages=messages, n=4)
    violation = check_rendered(unbounded, [10], RequestLimits(), CONTEXT, "messages")
    assert violation is None  # 10 + 4 x 90 <= 400
    unbounded = chat_cls(model="m", messages=messages, n=4, max_completion_tokens=CONTEXT + 1)
    assert check_rendered(unbounded, [1], RequestLimits(), CONTEXT, "messages").param == "n"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"top_k": 2**70}, "top_k"),
        ({"repetition_detection": {"min_count": 36218501770923474944000}},
         "repetition_detection.min_count"),
        ({"repetition_detection": {"max_pattern_size": 2**64, "min_count": 3}},
         "repetition_detection.max_pattern_size"),
    ],
)  # fmt: skip
def test_integers_beyond_64_bits_are_refused_naming_the_field(
    vllm_requests: tuple[type, type], fields: dict, param: str
) -> None:
    """vLLM accepts them and then fails the request with a 500 (found by the schema fuzz)."""
    completion_cls, chat_cls = vllm_requests
    for request in (
        completion_cls(model="m", prompt="hi", **fields),
        chat_cls(model="m", messages=[{"role": "user", "content": "hi"}], **fields),
    ):
        violation = check_sampling(request, RequestLimits(), CONTEXT)
        assert violation == Violation(f"{param} must fit in 64 bits", param)
    edge = completion_cls(model="m", prompt="hi", top_k=2**63 - 1)
    assert check_sampling(edge, RequestLimits(), CONTEXT) is None


# --- enforce ---


@dataclass
class Rejected:
    """What the fake serving object's create_error_response returns."""

    message: str
    param: str | None
    status_code: int = 400


@dataclass
class FakeServing:
    """vLLM's OpenAIServingChat / OpenAIServingCompletion as limits.enforce uses them."""

    rendered: Any  # what the render methods return
    max_model_len: int = CONTEXT
    model_config: Any = None
    calls: list[Any] = field(default_factory=list)
    measured: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.model_config = SimpleNamespace(max_model_len=self.max_model_len)

    async def render_chat_request(self, request: Any) -> Any:
        self.calls.append(request)
        return self.rendered

    async def render_completion_request(self, request: Any) -> Any:
        self.calls.append(request)
        return self.rendered

    def _extract_prompt_len(self, engine_input: Any) -> int:
        self.measured.append(engine_input)
        return len(engine_input["prompt_token_ids"])

    @staticmethod
    def create_error_response(
        message: str, err_type: str = "BadRequestError", status_code: int = 400,
        param: str | None = None,
    ) -> Rejected:  # fmt: skip
        return Rejected(message, param, status_code)


def tokens(n: int) -> dict:
    return {"prompt_token_ids": list(range(n))}


def render(serving: FakeServing, method: str, request: Any) -> Any:
    return asyncio.run(getattr(serving, method)(request))


def test_enforce_passes_what_is_within_the_caps_unchanged() -> None:
    inputs = [tokens(3), tokens(5)]
    completions = FakeServing(rendered=inputs)
    pair = ([{"role": "user", "content": "hi"}], [tokens(4)])
    chats = FakeServing(rendered=pair)
    enforce(chats, completions, RequestLimits())

    request = completion(max_tokens=10)
    assert render(completions, "render_completion_request", request) is inputs
    assert completions.calls == [request] and completions.measured == inputs
    request = chat(max_completion_tokens=10)
    assert render(chats, "render_chat_request", request) is pair
    assert chats.calls == [request] and chats.measured == pair[1]


@pytest.mark.parametrize(
    ("request_", "param"),
    [
        (completion(n=3), "n"),
        (completion(best_of=0), "best_of"),
        (completion(max_tokens=11), "max_tokens"),
    ],
)
def test_a_sampling_violation_is_answered_without_rendering(request_: Any, param: str) -> None:
    serving = FakeServing(rendered=[tokens(1)])
    enforce(None, serving, RequestLimits(max_n=2, max_tokens=10))
    rejected = render(serving, "render_completion_request", request_)
    assert isinstance(rejected, Rejected)
    assert (rejected.param, rejected.status_code) == (param, 400)
    assert serving.calls == [] and serving.measured == []


def test_a_prompt_violation_is_answered_after_rendering() -> None:
    limits = RequestLimits(max_prompt_tokens=8)
    completions = FakeServing(rendered=[tokens(2), tokens(9)])
    chats = FakeServing(rendered=([], [tokens(9)]))
    enforce(chats, completions, limits)

    rejected = render(completions, "render_completion_request", completion(max_tokens=1))
    assert rejected == Rejected("the prompt has 9 tokens, above this model's limit of 8", "prompt")
    assert len(completions.calls) == 1
    rejected = render(chats, "render_chat_request", chat())
    assert rejected == Rejected(
        "the prompt has 9 tokens, above this model's limit of 8", "messages"
    )


def test_a_budget_violation_uses_the_serving_objects_context_length() -> None:
    small, large = (
        FakeServing(rendered=[tokens(0)], max_model_len=10),
        FakeServing(rendered=[tokens(0)], max_model_len=1000),
    )
    enforce(small, large, RequestLimits())
    # n=5 without max_tokens: 5 x 10 > 4 x 10 on the small model, 5 x 1000 > 4000 on the large.
    rejected = render(small, "render_chat_request", chat(n=5))
    assert isinstance(rejected, Rejected) and rejected.param == "n"
    assert "may process 50 tokens" in rejected.message and "limit of 40;" in rejected.message
    rejected = render(large, "render_completion_request", completion(n=5, max_tokens=None))
    assert "may process 5000 tokens" in rejected.message
    # max_tokens over the small model's context (its default cap), fine on the large one.
    rejected = render(small, "render_chat_request", chat(max_tokens=11))
    assert rejected == Rejected("max_tokens=11 is above this model's limit of 10", "max_tokens")
    assert render(large, "render_completion_request", completion(max_tokens=11)) == [tokens(0)]


def test_an_error_from_render_is_passed_through() -> None:
    error = object()  # vLLM's ErrorResponse: neither a list nor a tuple
    serving = FakeServing(rendered=error)
    enforce(serving, serving, RequestLimits())
    assert render(serving, "render_completion_request", completion()) is error
    assert render(serving, "render_chat_request", chat()) is error
    assert len(serving.calls) == 2 and serving.measured == []


def test_enforce_skips_a_missing_serving_object() -> None:
    serving = FakeServing(rendered=[tokens(1)])
    original_chat = serving.render_chat_request
    enforce(None, serving, RequestLimits())
    assert serving.render_chat_request == original_chat  # only completions wrapped
    enforce(serving, None, RequestLimits(max_n=1))
    assert isinstance(render(serving, "render_chat_request", chat(n=2)), Rejected)
    enforce(None, None, RequestLimits())
