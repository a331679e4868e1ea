"""Per-request caps: `n`, `best_of`, `max_tokens`, prompt tokens and the total a request may
generate, each a 400 naming the parameter.

They are checked where vLLM renders a request, once, before anything is generated: vLLM's own
OpenAI app (the direct hot path) and LLMServer.chat/completions (behind the shared ingress)
call the same render methods, so one check covers both paths, streaming or not, and the
prompt is tokenized only once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from common.internals import prompt_len, wrap
from deployments.config import RequestLimits

# A request that leaves out max_tokens may generate up to the context left after its prompt;
# by default one request may process (prompts and generation) this many full contexts
# (e.g. n=4 without max_tokens, or 4 prompts that fill the context).
DEFAULT_REQUEST_CONTEXTS = 4


@dataclass(frozen=True)
class Violation:
    message: str
    param: str


def _max_tokens(request: Any) -> tuple[int | None, str]:
    """The requested max_tokens and the parameter that carried it (chat prefers
    max_completion_tokens, as OpenAI does)."""
    value = getattr(request, "max_completion_tokens", None)
    if value is not None:
        return value, "max_completion_tokens"
    return getattr(request, "max_tokens", None), "max_tokens"


# vLLM accepts some integers of any size (top_k, repetition_detection's) and fails the
# request with a 500 once they reach its 64-bit engine side.
_INT64_MAX = 2**63 - 1


def _oversized_int(fields: dict[str, Any], prefix: str = "", depth: int = 3) -> str | None:
    """The first field (nested objects included, lists not: prompts can be long) whose
    integer exceeds 64 bits."""
    for name, value in fields.items():
        if isinstance(value, int) and not -_INT64_MAX - 1 <= value <= _INT64_MAX:
            return prefix + name
        nested = value if isinstance(value, dict) else getattr(value, "__dict__", None)
        if depth > 0 and isinstance(nested, dict) and not isinstance(value, type):
            found = _oversized_int(nested, f"{prefix}{name}.", depth - 1)
            if found is not None:
                return found
    return None


def check_sampling(request: Any, limits: RequestLimits, context_len: int) -> Violation | None:
    """The caps known before the prompt is tokenized."""
    oversized = _oversized_int(vars(request))
    if oversized is not None:
        return Violation(f"{oversized} must fit in 64 bits", oversized)
    n = request.n or 1
    if n > limits.max_n:
        return Violation(f"n={n} is above this model's limit of {limits.max_n}", "n")
    best_of = getattr(request, "best_of", None) or (request.model_extra or {}).get("best_of")
    if best_of is not None:
        if not isinstance(best_of, int) or isinstance(best_of, bool) or best_of < 1:
            return Violation("best_of must be a positive integer", "best_of")
        if best_of > limits.max_best_of:
            return Violation(
                f"best_of={best_of} is above this model's limit of {limits.max_best_of}",
                "best_of",
            )
    if getattr(request, "allowed_token_ids", None) and _constrained(request):
        # vLLM fails such a request mid-generation (a 500) once the grammar rejects every
        # allowed token.
        return Violation(
            "allowed_token_ids cannot be combined with response_format or structured_outputs",
            "allowed_token_ids",
        )
    max_tokens, param = _max_tokens(request)
    cap = limits.max_tokens or context_len
    if max_tokens is not None and max_tokens > cap:
        return Violation(f"{param}={max_tokens} is above this model's limit of {cap}", param)
    return None


def _constrained(request: Any) -> bool:
    """Whether the output is constrained by a grammar (JSON, a schema, a regex...)."""
    response_format = getattr(request, "response_format", None)
    format_type = getattr(response_format, "type", None)
    return getattr(request, "structured_outputs", None) is not None or format_type not in (
        None,
        "text",
    )


def check_rendered(
    request: Any, prompt_lens: list[int], limits: RequestLimits, context_len: int, prompt: str
) -> Violation | None:
    """The caps that need the prompts' token counts; ``prompt``: the parameter holding them."""
    cap = limits.max_prompt_tokens or context_len
    longest = max(prompt_lens, default=0)
    if longest > cap:
        return Violation(
            f"the prompt has {longest} tokens, above this model's limit of {cap}", prompt
        )
    n = request.n or 1
    max_tokens, param = _max_tokens(request)
    total = sum(length + n * (max_tokens or max(context_len - length, 0)) for length in prompt_lens)
    budget = limits.max_request_tokens or DEFAULT_REQUEST_CONTEXTS * context_len
    if total > budget:
        shape = (
            f"{len(prompt_lens)} prompt(s) of up to {longest} tokens, each generating "
            f"n={n} x {param}={max_tokens or 'the rest of the context'}"
        )
        # The prompts alone over the budget: no n or max_tokens can help.
        culprit = prompt if sum(prompt_lens) >= budget else ("n" if n > 1 else param)
        return Violation(
            f"this request may process {total} tokens ({shape}), above this model's limit "
            f"of {budget}; send fewer or shorter prompts, or lower n or {param}",
            culprit,
        )
    return None


def enforce(chat: Any, completion: Any, limits: RequestLimits) -> None:
    """Wraps the render methods of vLLM's chat and completion serving objects (one replica's)
    so a request over a cap is answered with a 400 before the engine sees it (seam entries
    limits.render_chat_request, limits.render_completion_request)."""
    if chat is not None:
        wrap(chat, "limits.render_chat_request",
             lambda render: _checked(chat, render, limits, "messages"))  # fmt: skip
    if completion is not None:
        wrap(completion, "limits.render_completion_request",
             lambda render: _checked(completion, render, limits, "prompt"))  # fmt: skip


def _checked(serving: Any, render: Any, limits: RequestLimits, prompt: str) -> Any:
    async def render_checked(request: Any) -> Any:
        context_len = serving.model_config.max_model_len
        violation = check_sampling(request, limits, context_len)
        if violation is None:
            result = await render(request)
            if not isinstance(result, tuple | list):  # vLLM's ErrorResponse
                return result
            engine_inputs = result[1] if isinstance(result, tuple) else result  # chat: a pair
            lens = [prompt_len(serving, engine_input) for engine_input in engine_inputs]
            violation = check_rendered(request, lens, limits, context_len, prompt)
            if violation is None:
                return result
        return serving.create_error_response(violation.message, param=violation.param)

    return render_checked
