"""The ``inferline`` console script dispatches to each operator tool."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.cli import main


def test_no_or_unknown_subcommand_is_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["nope"]) == 2
    err = capsys.readouterr().err
    assert all(f"  {c} " in err for c in ("slo", "models", "audit", "capture", "keys", "dr"))


def test_dr_subcommand_reaches_dr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dr", "list", "--from", str(tmp_path)]) == 0
    assert main(["dr", "verify", str(tmp_path / "missing")]) == 1
    assert "unreadable manifest" in capsys.readouterr().err


def test_slo_subcommand_reaches_slo(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["slo"])  # slo's own parser: one of --url/--file is required
    assert e.value.code == 2
    assert "inferline slo" in capsys.readouterr().err


def test_models_usage_errors_exit_2_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 1 means the server refused; a local mistake is exit 2, never a
    traceback, and a client certificate never falls back to plaintext."""
    missing = str(tmp_path / "missing.pem")
    assert main(["models", "--ca", missing, "status"]) == 2
    assert main(["models", "--cert", missing, "--key", missing, "status"]) == 2
    assert "need --ca" in capsys.readouterr().err
    bad = tmp_path / "outcomes.jsonl"
    bad.write_text("not json\n")
    assert main(["models", "--router", "127.0.0.1:1", "outcomes", str(bad)]) == 2
    assert main(["models", "--router", "127.0.0.1:1", "outcomes", missing]) == 2
    assert "Traceback" not in capsys.readouterr().err
