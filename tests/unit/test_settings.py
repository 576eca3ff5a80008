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
