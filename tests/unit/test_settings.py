"""The one settings object: every LLM_CLUSTER_* variable typed, documented and checked."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from common.config_file import ConfigError
from common.settings import Settings, env_name, get_settings

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        ("LLM_CLUSTER_UP_TIMEOUT_S", "soon", "valid number"),
        ("LLM_CLUSTER_HA_PROXY", "maybe", "valid boolean"),
        ("LLM_CLUSTER_TUNING", "fast", "'auto', 'small-cpu' or 'off'"),
        ("LLM_CLUSTER_WORKER_NICENESS", "40", "less than or equal to 19"),
    ],
)
def test_a_bad_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, problem: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as info:
        get_settings()
    assert variable in str(info.value) and problem in str(info.value)


def test_values_are_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_CLUSTER_JOB_EXCLUDES", ".venv,/data")
    monkeypatch.setenv("LLM_CLUSTER_HA_PROXY", "0")
    monkeypatch.setenv("LLM_CLUSTER_STATE_DIR", "/tmp/x")
    settings = get_settings()
    assert settings.job_excludes == (".venv", "/data")
    assert settings.ha_proxy is False and settings.state_dir == Path("/tmp/x")


def test_every_setting_is_documented() -> None:
    assert all(field.description for field in Settings.model_fields.values())


def test_no_module_reads_llm_cluster_variables_by_hand() -> None:
    """Only the settings object (and the names it defines) speak of LLM_CLUSTER_* values."""
    offenders = []
    for path in [*REPO.glob("cluster/*.py"), *REPO.glob("deployments/*.py"),
                 *REPO.glob("training/**/*.py"), *REPO.glob("benchmarks/*.py")]:  # fmt: skip
        text = path.read_text()
        if 'os.environ.get("LLM_CLUSTER' in text or 'getenv("LLM_CLUSTER' in text:
            offenders.append(path.name)
    assert not offenders
    assert env_name("state_dir") == "LLM_CLUSTER_STATE_DIR"
