"""The seam to Ray's and vLLM's internals (common.internals): every hook holds on the installed
versions, and one that an upgrade broke fails naming the hook, shown on fake modules that lack
what each hook relies on. No Ray cluster is started."""

from __future__ import annotations

import ast
import functools
import inspect
import re
import subprocess
import sys
import textwrap
from dataclasses import replace
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from common import internals
from common.internals import seam
from common.internals.seam import Hook
from tests.conftest import REPO

NAMES = sorted(internals.HOOKS)


@pytest.mark.parametrize("name", NAMES)
def test_every_hook_holds_on_the_installed_versions(name: str) -> None:
    assert internals.problems(internals.hook(name)) == []


def test_every_export_resolves() -> None:
    exported = [h.name for h in internals.HOOKS.values() if h.export]
    assert exported and all(getattr(internals, name) is not None for name in exported)


def test_a_name_not_exported_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = internals.no_such_name
    with pytest.raises(AttributeError, match="server._start_engine"):  # a hook, not a name
        getattr(internals, "server._start_engine")
    with pytest.raises(ImportError):
        from common.internals import no_such_name  # noqa: F401


def test_every_hook_says_why_and_where_it_was_checked() -> None:
    for hook in internals.HOOKS.values():
        assert len(hook.why) > 20, hook.name
        package, _, version = hook.checked_on.partition(" ")
        assert internals.WRITTEN_FOR[package] == version, hook.name


def test_written_for_the_installed_versions() -> None:
    assert internals.check_versions() == []


def test_a_version_mismatch_logs_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(internals.WRITTEN_FOR, "ray", "0.0.1")
    monkeypatch.setitem(internals.WRITTEN_FOR, "vllm", "0.0.2")
    with caplog.at_level("WARNING", logger=internals.__name__):
        mismatches = internals.check_versions()
    assert [m.split(":")[0] for m in mismatches] == ["ray", "vllm"]
    assert len(caplog.records) == 1
    assert "0.0.1" in caplog.text and "0.0.2" in caplog.text


# -- An upgrade that removed what a hook relies on, played with fake modules.


@pytest.fixture
def upgraded(monkeypatch: pytest.MonkeyPatch) -> None:
    """The installed versions read as the next releases."""
    monkeypatch.setattr(seam, "installed_versions", lambda: {"ray": "2.61.0", "vllm": "0.33.0"})


def importer(**modules: Any) -> seam.Importer:
    def import_module(name: str) -> Any:
        if name not in modules:
            raise ImportError(f"No module named {name!r}")
        return modules[name]

    return import_module


def stripped(hook: Hook) -> tuple[Hook, seam.Importer]:
    """The hook pointed at a fake module where its owner is an empty class (or, for an
    imported name, missing): the installed version without what the hook relies on."""
    _, _, qualname = hook.owner.partition(":")
    fake = ModuleType("fake_upgrade")
    if qualname and (hook.attr or hook.also):
        head, *rest = qualname.split(".")
        node: Any = fake
        for part in [head, *rest]:
            setattr(node, part, type(part, (), {}))
            node = getattr(node, part)
    return replace(hook, owner=f"fake_upgrade:{qualname}"), importer(fake_upgrade=fake)


@pytest.mark.parametrize("name", NAMES)
def test_each_hook_fails_naming_itself_when_the_installed_version_lacks_it(
    name: str, upgraded: None
) -> None:
    hook = internals.hook(name)
    fake, import_module = stripped(hook)
    found = seam.problems(fake, import_module)
    assert found, f"{name}: a version without what it relies on passed the check"
    installed = {"ray": "Ray 2.61.0", "vllm": "vLLM 0.33.0"}[hook.package]
    for problem in found:
        assert problem.startswith(f"seam entry {name!r} relies on fake_upgrade"), problem
        assert f"which the installed {installed} no longer has" in problem
        assert f"(checked on {hook.checked_on}" in problem
    missing = hook.attr or (hook.also[0] if hook.also else hook.owner.partition(":")[2])
    assert any(missing in problem for problem in found), found


class Ingress:
    """A fake Ray ingress of the next release."""

    async def _get_response(self, request: Any) -> Any: ...

    async def _process_llm_request(self, body: Any) -> Any:
        return await self._handle(body)

    async def _handle(self, body: Any) -> Any: ...


def test_a_changed_signature_names_the_hook_and_the_new_parameters(upgraded: None) -> None:
    hook = replace(internals.hook("ingress._get_response"), owner="fake_ray:Ingress", used_in=None)
    [problem] = seam.problems(hook, importer(fake_ray=sys.modules[__name__]))
    assert problem.startswith(
        "seam entry 'ingress._get_response' relies on fake_ray.Ingress._get_response(self, body, "
        "call_method, raw_request) which the installed Ray 2.61.0 no longer has: its "
        "parameters are now (self, request)"
    )


def test_an_override_ray_no_longer_calls_names_the_hook(upgraded: None) -> None:
    hook = replace(
        internals.hook("ingress._get_response"),
        owner="fake_ray:Ingress", params=("self", "request"),
        used_in="fake_ray:Ingress._process_llm_request",
    )  # fmt: skip
    [problem] = seam.problems(hook, importer(fake_ray=sys.modules[__name__]))
    assert "seam entry 'ingress._get_response'" in problem
    assert "fake_ray.Ingress._process_llm_request no longer looks ._get_response up" in problem


class Client:
    async def get_output_async(self) -> Any: ...


class Loggers:
    def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx=None): ...


class LookedUpOnce:
    """vLLM's output handler if it bound the methods once, before its loop."""

    def _run_output_handler(self, core: Client, loggers: Loggers) -> None:
        get_output, record = core.get_output_async, loggers.record
        while True:
            record(None, get_output())


class CalledPositionally:
    def _run_output_handler(self, core: Client, loggers: Loggers) -> None:
        while True:
            loggers.record(None, core.get_output_async())


@pytest.mark.parametrize(
    ("name", "handler", "expected"),
    [("engine_watch.get_output_async", "LookedUpOnce", "no longer looks .get_output_async up "
      "on every step"),
     ("engine_watch.record", "LookedUpOnce", "no longer looks .record up on every step"),
     ("engine_watch.record", "CalledPositionally", "no longer passes iteration_stats to .record")],
)  # fmt: skip
def test_a_wrapped_method_vllm_no_longer_looks_up_per_step_names_the_hook(
    name: str, handler: str, expected: str, upgraded: None
) -> None:
    hook = internals.hook(name)
    owner = "fake_vllm:Client" if hook.attr == "get_output_async" else "fake_vllm:Loggers"
    fake = replace(hook, owner=owner, used_in=f"fake_vllm:{handler}._run_output_handler")
    [problem] = seam.problems(fake, importer(fake_vllm=sys.modules[__name__]))
    assert problem.startswith(f"seam entry {name!r} relies on {owner.replace(':', '.')}")
    assert expected in problem and "installed vLLM 0.33.0" in problem


def test_a_private_attribute_set_in_init_is_found_in_the_source(upgraded: None) -> None:
    class Server:
        def __init__(self) -> None:
            self._llm_config = None

    class Renamed:
        def __init__(self) -> None:
            self._config = None

    hook = internals.hook("server._llm_config")
    fakes = importer(fake_ray=SimpleNamespace(Server=Server, Renamed=Renamed))
    assert seam.problems(replace(hook, owner="fake_ray:Server"), fakes) == []
    [problem] = seam.problems(replace(hook, owner="fake_ray:Renamed"), fakes)
    assert "seam entry 'server._llm_config'" in problem and "no member _llm_config" in problem


def test_a_wrapper_that_hides_the_handler_names_the_hook(upgraded: None) -> None:
    def with_cancellation(handler_func: Any) -> Any:
        async def wrapper(*args: Any) -> Any:  # no functools.wraps
            return await handler_func(*args)

        return wrapper

    hook = replace(internals.hook("direct.with_cancellation"), owner="fake_vllm:with_cancellation")
    [problem] = seam.problems(hook, importer(fake_vllm=SimpleNamespace(**locals())))
    assert "seam entry 'direct.with_cancellation'" in problem
    assert "no longer keeps __wrapped__" in problem


def test_an_exported_name_that_moved_fails_on_import_naming_the_hook(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hook = internals.hook("CallbackBase")
    monkeypatch.setitem(internals.HOOKS, "CallbackBase", replace(hook, owner=hook.owner + "Moved"))
    monkeypatch.delitem(vars(internals), "CallbackBase", raising=False)
    with pytest.raises(ImportError, match=re.escape("seam entry 'CallbackBase' relies on")):
        from common.internals import CallbackBase  # noqa: F401


# -- The code reaches Ray's internals only through declared hooks.


def _ray_bases(cls: type) -> list[type]:
    return [b for b in cls.__mro__[1:] if b.__module__.startswith("ray.")]


def test_every_private_override_of_a_ray_class_is_a_seam_entry() -> None:
    from deployments.ingress import DirectLLMServer, LLMClusterIngress, LLMClusterServer

    declared = {(h.owner, h.attr) for h in internals.HOOKS.values()}
    for cls in (LLMClusterIngress, LLMClusterServer, DirectLLMServer):
        bases = _ray_bases(cls)
        public = next(b for b in bases if b.__module__.startswith("ray.serve."))
        for name, value in vars(cls).items():
            if name.startswith("__") or not name.startswith("_") or not callable(value):
                continue
            if seam.has_member(bases[0], name):  # through its MRO
                owner = f"{public.__module__}:{public.__qualname__}"
                assert (owner, name) in declared, f"{cls.__name__}.{name} overrides Ray's"


def test_attributes_our_classes_set_do_not_shadow_rays() -> None:
    from deployments.ingress import DirectLLMServer, LLMClusterIngress, LLMClusterServer

    for cls in (LLMClusterIngress, LLMClusterServer, DirectLLMServer):
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
        stores = [n for n in ast.walk(tree) if isinstance(n, ast.Attribute)]
        ours = {
            n.attr
            for n in stores
            if isinstance(n.ctx, ast.Store) and getattr(n.value, "id", None) == "self"
        }
        assert ours or cls is DirectLLMServer
        for name in ours:
            assert not seam.has_member(_ray_bases(cls)[0], name), f"{cls.__name__}: {name}"


# -- The accessors.


def test_wrap_replaces_the_member_the_hook_names() -> None:
    serving = SimpleNamespace(render_chat_request=lambda request: ("rendered", request))
    internals.wrap(serving, "limits.render_chat_request", lambda render: lambda r: render(r * 2))
    assert serving.render_chat_request(2) == ("rendered", 4)


def test_handlers_run_in_the_request_task() -> None:
    from fastapi import FastAPI

    async def handler(request: Any) -> None: ...

    with_cancellation = internals.resolve("direct.with_cancellation")
    app = FastAPI()
    app.post("/wrapped")(with_cancellation(handler))
    app.post("/plain")(functools.partial(handler))
    internals.run_handlers_in_request_task(app)
    calls = {r.path: r.dependant.call for r in app.router.routes if hasattr(r, "dependant")}
    assert calls["/wrapped"] is handler
    assert isinstance(calls["/plain"], functools.partial)


def test_importing_the_seam_imports_neither_ray_nor_vllm() -> None:
    # The CLI resolves the token-auth hooks without paying for vLLM's import.
    code = (
        "import sys, common.internals as i\n"
        "assert not {'ray', 'vllm'} & set(sys.modules), 'eager import'\n"
        "i.resolve('token_auth.enable'), i.resolve('token_auth.ensure_token')\n"
        "assert 'vllm' not in sys.modules, 'token auth imported vLLM'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)
