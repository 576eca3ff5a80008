"""The one settings object: built from INFERLINE_* variables, validated, frozen."""

from __future__ import annotations

import pydantic
import pytest

from router.settings import Settings


def test_nested_sections_come_from_one_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERLINE_FEATURES__TIMEOUT_MS", "12.5")
    monkeypatch.setenv("INFERLINE_SERVER__WORKERS", "2")
    s = Settings()
    assert (s.features.timeout_ms, s.server.workers) == (12.5, 2)
    with pytest.raises(pydantic.ValidationError):
        s.server.workers = 3  # type: ignore[misc]  # frozen: built once, passed down


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("INFERLINE_FEATURES__TIMEOUT_MS", "inf"),  # would remove the read's hard deadline
        ("INFERLINE_FEATURES__TIMEOUT_MS", "nan"),
        ("INFERLINE_SERVER__DRAIN_S", "Infinity"),
        ("INFERLINE_FEATURES__TIMEOUT_MS", "0"),
        ("INFERLINE_SERVER__NO_SUCH_SETTING", "1"),
    ],
)
def test_non_finite_out_of_range_or_unknown_settings_are_refused(
    monkeypatch: pytest.MonkeyPatch, key: str, value: str
) -> None:
    monkeypatch.setenv(key, value)
    with pytest.raises(pydantic.ValidationError):
        Settings()


@pytest.mark.parametrize(
    "env",
    [
        # Timeouts capped at 10 ms could never count against a breaker asking 20.
        {"INFERLINE_RELIABILITY__INFERENCE_TIMEOUT_MS": "10"},
        # A window of 100 rows never reaches 200 samples: drift never exported.
        {"INFERLINE_QUALITY__DRIFT_WINDOW": "100"},
    ],
)
def test_settings_that_silently_disable_a_safeguard_are_refused(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(pydantic.ValidationError):
        Settings()
