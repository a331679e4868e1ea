"""The adapter to Ray's and vLLM's private names: every name resolves on the installed versions,
and one that moved fails loudly, naming where it was looked for. No Ray cluster is started."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from common import internals
from tests.conftest import REPO


def test_every_name_resolves() -> None:
    resolved = internals.resolve_all()
    assert set(resolved) == set(internals._TABLE)
    assert all(value is not None for value in resolved.values())


def test_a_name_not_in_the_table_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = internals.no_such_name
    with pytest.raises(ImportError):
        from common.internals import no_such_name  # noqa: F401


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


@pytest.mark.parametrize("moved", ["attribute", "module"])
def test_a_moved_name_fails_loudly(monkeypatch: pytest.MonkeyPatch, moved: str) -> None:
    module, attr = internals._TABLE["CallbackBase"]
    entry = (module, "NoSuchName") if moved == "attribute" else (f"{module}_moved", attr)
    monkeypatch.setitem(internals._TABLE, "CallbackBase", entry)
    with pytest.raises(ImportError, match=re.escape(".".join(entry))):
        internals.resolve_all()


def test_importing_the_adapter_imports_neither_ray_nor_vllm() -> None:
    # The CLI resolves the token-auth helpers without paying for vLLM's import.
    code = (
        "import sys, common.internals as i\n"
        "assert not {'ray', 'vllm'} & set(sys.modules), 'eager import'\n"
        "i._enable_token_auth, i.ensure_token_if_auth_enabled\n"
        "assert 'vllm' not in sys.modules, 'token auth imported vLLM'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)


def test_private_attributes_still_exist() -> None:
    """VLLMEngine sets its attributes in __init__, so the check reads its source."""
    import importlib
    import inspect

    for path, attributes in internals.ENGINE_ATTRIBUTES.items():
        module_name, _, class_name = path.rpartition(".")
        source = inspect.getsource(getattr(importlib.import_module(module_name), class_name))
        for attribute in attributes:
            assert attribute in source, f"{path} no longer has {attribute}"
