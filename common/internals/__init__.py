"""The one seam between the project and Ray's or vLLM's internals.

Every coupling that must reach inside them (a private import, an overridden private method,
a private attribute read, a wrapped or replaced internal) is one Hook of ``HOOKS``, which
says what it touches, why no public API serves and the version it was checked on; the code
reaches it only through this package. tests/unit/test_internals.py checks every hook against
the installed Ray and vLLM, so an upgrade fails one test that names the hook. The package
imports neither Ray nor vLLM: a name resolves on first use.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from common.internals import ray_hooks, vllm_hooks
from common.internals.ray_hooks import (
    cluster_auth_token,
    enable_token_auth,
    engine_client,
    ensure_auth_token,
    llm_config,
    openai_servings,
    replica_assigned,
    session_logs_dir,
)
from common.internals.seam import (
    WRITTEN_FOR,
    Hook,
    SeamError,
    installed_versions,
    owner_of,
    problems,
)
from common.internals.seam import resolve as seam_resolve
from common.internals.vllm_hooks import (
    engine_core,
    prompt_len,
    run_handlers_in_request_task,
    stat_logger_manager,
    vllm_is_cpu,
)

__all__ = [
    "HOOKS", "WRITTEN_FOR", "Hook", "SeamError", "check_all", "check_versions",
    "cluster_auth_token", "enable_token_auth", "engine_client", "engine_core",
    "ensure_auth_token", "hook", "installed_versions", "llm_config", "openai_servings",
    "owner", "problems", "prompt_len", "replica_assigned", "resolve",
    "run_handlers_in_request_task", "session_logs_dir", "stat_logger_manager", "vllm_is_cpu",
    "wrap",
]  # fmt: skip

logger = logging.getLogger(__name__)

# Name -> hook. A test may point one at a fake module (dataclasses.replace of its owner).
HOOKS: dict[str, Hook] = {h.name: h for h in (*ray_hooks.HOOKS, *vllm_hooks.HOOKS)}
_versions_checked = False


def hook(name: str) -> Hook:
    return HOOKS[name]


def check_versions() -> list[str]:
    """Logs one warning when an installed version differs from WRITTEN_FOR.

    Returns:
        Each difference as "package: installed X, written for Y". A package that is not
        installed is skipped: the hooks that need it fail on use anyway.
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
            "common.internals relies on Ray/vLLM internals checked on other versions (%s); "
            "run tests/unit/test_internals.py to find any hook that broke",
            "; ".join(mismatches),
        )
    return mismatches


def resolve(name: str) -> Any:
    """What the hook ``name`` names, from the installed Ray or vLLM (read anew each call).

    Raises:
        SeamError: naming the hook, when the installed version lacks it.
    """
    global _versions_checked
    if not _versions_checked:
        _versions_checked = True
        check_versions()
    return seam_resolve(HOOKS[name])


def owner(name: str) -> Any:
    """The module, class or object the hook ``name`` reaches into."""
    return owner_of(HOOKS[name])


def wrap(obj: Any, name: str, make: Callable[[Any], Any]) -> None:
    """Replaces the member the hook ``name`` relies on, on ``obj`` (an instance; None: the
    hook's own class), with ``make(current)``."""
    attr = HOOKS[name].attr
    assert attr is not None, f"seam entry {name!r} names no member to wrap"
    target = owner(name) if obj is None else obj
    setattr(target, attr, make(getattr(target, attr)))


def check_all() -> list[str]:
    """Every problem of every hook on the installed versions; empty when all hold."""
    return [problem for h in HOOKS.values() for problem in problems(h)]


def __getattr__(name: str) -> Any:
    """PEP 562: ``from common.internals import X`` imports only what the hook X needs."""
    found = HOOKS.get(name)
    if found is None or not found.export:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = resolve(name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *(h.name for h in HOOKS.values() if h.export)})
