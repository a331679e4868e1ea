"""Ray's internals the project relies on: one Hook per coupling (what it touches, why no
public API serves), and the accessors the rest of the code calls instead of the internals."""

from __future__ import annotations

from typing import Any

from common.internals.seam import RAY, Hook

_MODELS = "ray.llm._internal.serve.core.configs.openai_api_models"
_INGRESS_MODULE = "ray.llm._internal.serve.core.ingress.ingress"
_TOKEN = "ray._private.authentication.authentication_token_setup"
_INGRESS = "ray.serve.llm.ingress:OpenAiIngress"
_SERVER = "ray.serve.llm.deployment:LLMServer"
_ENGINE = "ray.llm._internal.serve.engines.vllm.vllm_engine:VLLMEngine"

HOOKS = (
    # The shared ingress (deployments.ingress.LLMClusterIngress, a public OpenAiIngress).
    Hook("ModelCard", f"{_MODELS}:ModelCard", "the model cards OpenAiIngress's public "
         "constructor takes; ray.serve.llm exports no card type", RAY, export=True),
    Hook("to_model_metadata", f"{_MODELS}:to_model_metadata", "an LLMConfig's model card as "
         "Ray's own builder makes it; not exported", RAY,
         params=("model_id", "model_config", "overrides"), export=True),
    Hook("DEFAULT_ENDPOINTS", f"{_INGRESS_MODULE}:DEFAULT_ENDPOINTS", "the stock routes (paths, "
         "response models) our endpoint map picks from; make_fastapi_ingress uses them only "
         "when given no map", RAY,
         also=("models", "model_data", "completions", "chat", "tokenize", "detokenize"),
         export=True),
    Hook("init_ingress_app", f"{_INGRESS_MODULE}:init", "the stock ingress app (request ids, "
         "CORS, HTTP metrics) our middleware wraps; make_fastapi_ingress builds it only when "
         "given no app", RAY, params=(), export=True),
    Hook("ErrorResponse", f"{_MODELS}:ErrorResponse", "what a replica yields for a failed "
         "request; the public ray.serve.llm ErrorResponse is a subclass, so isinstance against "
         "it misses the engine's", RAY, also=("error",), export=True),
    Hook("ErrorInfo", f"{_MODELS}:ErrorInfo", "the body of ErrorResponse (fake engines build "
         "it)", RAY, also=("message", "code", "type", "param"), export=True),
    Hook("OpenAIHTTPException", f"{_MODELS}:OpenAIHTTPException", "what Ray's ingress raises "
         "(unknown model card, its timeout); our handler gives it the OpenAI error shape", RAY,
         export=True),
    Hook("ingress._get_model_id", _INGRESS, "overridden: an unknown model is a 404 naming the "
         "`model` parameter; the public routes resolve the model only through it", RAY,
         attr="_get_model_id", params=("self", "model"), used_in=f"{_INGRESS}._get_response"),
    Hook("ingress._get_response", _INGRESS, "overridden: the first item of a replica's stream "
         "decides the status (engine errors, capacity, a dead replica: 503 + Retry-After) and "
         "a cut stream ends with an error event; every public route streams through it", RAY,
         attr="_get_response", params=("self", "body", "call_method", "raw_request"),
         used_in=f"{_INGRESS}._process_llm_request"),
    Hook("handle._fetch_future_result_async", "ray.serve.handle:_DeploymentResponseBase",
         "awaited to learn that a replica took a handle call (the hold timeout of a sleeping "
         "model); a response exposes no public 'assigned' signal", RAY,
         attr="_fetch_future_result_async", params=("self",)),
    # A model's replica (deployments.ingress.LLMClusterServer, a public LLMServer).
    Hook("server._start_engine", _SERVER, "overridden: starts the engine without Ray's "
         "usage-telemetry report (a detached actor and a fresh worker process per replica "
         "start), then caps and watches it; start() has no other seam", RAY,
         attr="_start_engine", params=("self",), used_in=f"{_SERVER}.start"),
    Hook("server._llm_config", _SERVER, "the replica's LLMConfig; the public llm_config() is "
         "a remote (async) method, read here from sync code", RAY, attr="_llm_config"),
    Hook("engine._engine_client", _ENGINE, "the vLLM AsyncLLM behind Ray's engine, which "
         "EngineWatch watches; VLLMEngine does not expose it", RAY, attr="_engine_client"),
    Hook("engine._oai_serving", _ENGINE, "vLLM's chat and completion serving objects, whose "
         "render methods deployments.limits wraps; VLLMEngine does not expose them", RAY,
         also=("_oai_serving_chat", "_oai_serving_completion")),
    Hook("CallbackBase", "ray.llm._internal.common.callbacks.base:CallbackBase",
         "LLMConfig.callback_config takes a subclass of it; the base is not exported", RAY,
         also=("on_before_node_init", "llm_config", "ctx"), export=True),
    Hook("callbacks.run_init_node", "ray.llm._internal.common.callbacks.base:CallbackCtx",
         "skips Ray's node initialization (a model download task) for a model on local disk; "
         "no public switch", RAY, attr="run_init_node"),
    # Token auth and the node's logs, for drivers that are not started by `ray start`.
    Hook("token_auth.enable", _TOKEN, "makes a process that imported ray before choosing the "
         "auth mode speak token auth (Ray caches RAY_AUTH_MODE); no public call", RAY,
         attr="_enable_token_auth", params=()),
    Hook("token_auth.ensure_token", _TOKEN, "creates Ray's default token, which `ray start "
         "--head` needs in token mode and only ray.init() creates", RAY,
         attr="ensure_token_if_auth_enabled",
         params=("system_config", "create_token_if_missing")),
    Hook("auth_headers", "ray._private.authentication.http_token_authentication:"
         "get_auth_headers_if_auth_enabled", "the Authorization header a token-auth "
         "dashboard's REST API wants", RAY, params=("user_headers",), export=True),
    Hook("token_auth.loader", "ray._raylet:AuthenticationTokenLoader", "the cluster token as "
         "Ray finds it (env var, token file, ~/.ray/auth_token): the dashboard's credential",
         RAY, also=("instance", "has_token", "get_raw_token")),
    Hook("logs.global_node", "ray._private.worker", "this process's Ray node, which knows the "
         "session's log directory; the runtime context does not", RAY, attr="_global_node"),
    Hook("logs.logs_dir", "ray._private.node:Node", "the session's log directory, where Ray's "
         "log API finds the request logs", RAY, attr="get_logs_dir_path", params=("self",)),
    # What `ray up` runs on a cluster launcher config (tests check cluster.yaml with it).
    Hook("prepare_config", "ray.autoscaler._private.util:prepare_config", "what `ray up` "
         "does to a cluster config; no public validator", RAY, params=("config",), export=True),
    Hook("validate_config", "ray.autoscaler._private.util:validate_config", "the schema check "
         "`ray up` runs", RAY, params=("config",), export=True),
)  # fmt: skip


def _target(name: str) -> Any:
    from common.internals import resolve

    return resolve(name)


def enable_token_auth() -> None:
    """Makes this process speak Ray's token auth, as a head started in token mode requires
    (hook token_auth.enable). The token is Ray's default, ~/.ray/auth_token."""
    _target("token_auth.enable")()


def ensure_auth_token() -> None:
    """Enables token auth, then creates Ray's default token if there is none (hook
    token_auth.ensure_token). A token given through RAY_AUTH_TOKEN(_PATH) is used as it is."""
    enable_token_auth()
    _target("token_auth.ensure_token")(create_token_if_missing=True)


def cluster_auth_token() -> str | None:
    """Ray's cluster auth token as this process finds it; None when there is none (hook
    token_auth.loader). Whoever may drive the cluster may scale it from the dashboard."""
    loader = _target("token_auth.loader").instance()
    return loader.get_raw_token() if loader.has_token() else None


def session_logs_dir() -> str | None:
    """This node's Ray log directory; None outside a Ray worker or driver (hooks
    logs.global_node, logs.logs_dir)."""
    node = _target("logs.global_node")
    return node.get_logs_dir_path() if node is not None else None


def llm_config(server: Any) -> Any:
    """A replica's LLMConfig (hook server._llm_config)."""
    return server._llm_config


def engine_client(engine: Any) -> Any:
    """The vLLM AsyncLLM behind Ray's VLLMEngine, None before it started (hook
    engine._engine_client)."""
    return engine._engine_client


def openai_servings(engine: Any) -> tuple[Any, Any]:
    """vLLM's chat and completion serving objects of a started VLLMEngine: the ones its OpenAI
    app routes to and LLMServer.chat/completions call (hook engine._oai_serving)."""
    return engine._oai_serving_chat, engine._oai_serving_completion


async def replica_assigned(response: Any) -> None:
    """Returns once Serve has given a handle call to a replica; until then it waits in the
    handle's queue (hook handle._fetch_future_result_async)."""
    await response._fetch_future_result_async()
