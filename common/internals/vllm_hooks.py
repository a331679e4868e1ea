"""vLLM's internals the project relies on: one Hook per coupling (what it touches, why no
public API serves), and the accessors the rest of the code calls instead of the internals."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from common.internals.seam import VLLM, Hook

_ASYNC_LLM = "vllm.v1.engine.async_llm:AsyncLLM"
_STATS = "vllm.v1.metrics.stats"
_CHAT = "vllm.entrypoints.openai.chat_completion.serving:OpenAIServingChat"
_COMPLETION = "vllm.entrypoints.openai.completion.serving:OpenAIServingCompletion"
_API_UTILS = "vllm.entrypoints.serve.utils.api_utils"


async def _probe_handler(*args: Any) -> None: ...


def _keeps_the_handler(with_cancellation: Callable[..., Any]) -> str | None:
    wrapped = getattr(with_cancellation(_probe_handler), "__wrapped__", None)
    return None if wrapped is _probe_handler else "its wrapper no longer keeps __wrapped__"


HOOKS = (
    # Engine failures and the platform (deployments.errors, ingress, callbacks).
    Hook("EngineDeadError", "vllm.v1.engine.exceptions:EngineDeadError", "what a dead engine "
         "raises (a 500 in vLLM's app, a 503 + Retry-After here); no public module exports "
         "it", VLLM, export=True),
    Hook("platform.is_cpu", "vllm.platforms:current_platform", "whether the replica's own vLLM "
         "build is the CPU one (host tuning applies to CPU engines only); Ray's LLMConfig does "
         "not say", VLLM, attr="is_cpu"),
    # The direct path: vLLM's own OpenAI app served from the replica.
    Hook("direct.with_cancellation", f"{_API_UTILS}:with_cancellation", "vLLM wraps its route "
         "handlers in a task of their own; under Serve a client's disconnect cancels the "
         "request's task but not the handler's, which ran on. run_handlers_in_request_task "
         "finds the wrapped routes by the wrapper's code and has FastAPI call the handler "
         "itself (route.dependant.call); vLLM has no switch to turn the wrapper off", VLLM,
         params=("handler_func",), probe=_keeps_the_handler),
    # The engine watch (deployments.engine_watch): progress, load and TTFT per engine step.
    Hook("engine_watch.engine_core", _ASYNC_LLM, "the engine core client whose per-step "
         "method EngineWatch wraps; AsyncLLM has no per-step callback", VLLM,
         attr="engine_core", also=("errored", "get_num_unfinished_requests")),
    Hook("engine_watch.get_output_async", "vllm.v1.engine.core_client:AsyncMPClient",
         "wrapped on the instance: each engine step's outputs (progress for stall detection, "
         "the scheduler's stats); vLLM's output handler looks it up on every step", VLLM,
         attr="get_output_async", params=("self",),
         used_in=f"{_ASYNC_LLM}._run_output_handler", in_loop=True),
    Hook("engine_watch.logger_manager", _ASYNC_LLM, "the stat loggers' manager, None with "
         "disable_log_stats; the stat-logger plugin API would construct loggers we could not "
         "tie to one engine", VLLM, attr="logger_manager"),
    Hook("engine_watch.record", "vllm.v1.metrics.loggers:StatLoggerManager", "wrapped on the "
         "instance: each step's iteration stats (first-token times, finished requests); "
         "vLLM's output handler looks it up on every step and passes iteration_stats by name",
         VLLM, attr="record",
         params=("self", "scheduler_stats", "iteration_stats", "mm_cache_stats", "engine_idx"),
         used_in=f"{_ASYNC_LLM}._run_output_handler", in_loop=True,
         keywords=("iteration_stats",)),
    Hook("engine_watch.SchedulerStats", f"{_STATS}:SchedulerStats", "the load the scaling "
         "policy reads", VLLM, also=("num_running_reqs", "num_waiting_reqs", "kv_cache_usage")),
    Hook("engine_watch.IterationStats", f"{_STATS}:IterationStats", "first-token times (TTFT "
         "p95) and the requests a step finished", VLLM,
         also=("time_to_first_tokens_iter", "finished_requests")),
    Hook("telemetry.FinishedRequestStats", f"{_STATS}:FinishedRequestStats", "the token "
         "counts and times of a finished request, joined to its HTTP request", VLLM,
         also=("request_id", "num_prompt_tokens", "num_generation_tokens", "decode_time",
               "mean_time_per_output_token")),
    # Per-request caps (deployments.limits), checked where vLLM renders a request.
    Hook("limits.render_chat_request", _CHAT, "wrapped on the instance: a chat request over a "
         "cap is a 400 before the engine sees it, on both hot paths; vLLM has no request "
         "validation hook", VLLM, attr="render_chat_request", params=("self", "request"),
         also=("model_config", "create_error_response"),
         used_in=f"{_CHAT}._create_chat_completion"),
    Hook("limits.render_completion_request", _COMPLETION, "as limits.render_chat_request, for "
         "completions", VLLM, attr="render_completion_request", params=("self", "request"),
         also=("model_config", "create_error_response"),
         used_in=f"{_COMPLETION}._create_completion"),
    Hook("limits._extract_prompt_len", "vllm.entrypoints.serve.engine.serving:BaseServing",
         "a rendered prompt's token count, as vLLM measures it", VLLM,
         attr="_extract_prompt_len", params=("self", "prompt")),
    # Host tuning for small CPU nodes (deployments.host_tuning).
    Hook("host_tuning.SpinCondition.wait",
         "vllm.distributed.device_communicators.shm_broadcast:SpinCondition", "replaced on "
         "the class: the engine core sleeps between looks at its worker's queue in vLLM's "
         "hard-coded one-second busy window, instead of spinning on sched_yield; no setting "
         "(upstream: vllm-project/vllm#52814, #52848)", VLLM, attr="wait",
         params=("self", "timeout_ms"), also=("last_read", "busy_loop_s")),
)  # fmt: skip


def vllm_is_cpu() -> bool:
    """Whether this process's vLLM build runs on the CPU (hook platform.is_cpu)."""
    from common.internals import resolve

    return bool(resolve("platform.is_cpu")())


def engine_core(engine: Any) -> Any:
    """The AsyncLLM's engine core client (hook engine_watch.engine_core)."""
    return engine.engine_core


def stat_logger_manager(engine: Any) -> Any:
    """The AsyncLLM's stat loggers' manager; None when it keeps no stats (hook
    engine_watch.logger_manager)."""
    return getattr(engine, "logger_manager", None)


def prompt_len(serving: Any, engine_input: Any) -> int:
    """The token count of one rendered prompt (hook limits._extract_prompt_len)."""
    return int(serving._extract_prompt_len(engine_input))


def run_handlers_in_request_task(app: Any) -> None:
    """Makes vLLM's route handlers run in the request's own task, so a client that
    disconnects cancels its generation (hook direct.with_cancellation)."""
    from common.internals import resolve

    wrapper_code = resolve("direct.with_cancellation")(_probe_handler).__code__
    for route in app.router.routes:
        endpoint: Any = getattr(route, "endpoint", None)
        if getattr(endpoint, "__code__", None) is wrapper_code:
            route.dependant.call = endpoint.__wrapped__
