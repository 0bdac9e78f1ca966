"""Settings: defaults, thresher.toml, THRESHER_* variables, and refusing unsafe public settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from thresher.config import Settings, UnsafeSettings


def test_defaults_run_on_a_laptop(settings: Settings) -> None:
    s = Settings()
    assert s.model == "embedded" and s.host == "127.0.0.1" and s.port == 8000 and not s.public
    assert s.db_url == "sqlite:///thresher-data/thresher.db"
    assert s.licence == "CC-BY-4.0" and s.idle_timeout_minutes == 30


def test_toml_then_env_then_arguments(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "thresher.toml").write_text('port = 9001\nlicence = "CC0-1.0"\napi_keys = ["a", "b"]\n')
    s = Settings()
    assert (s.port, s.licence, s.api_keys) == (9001, "CC0-1.0", ["a", "b"])
    monkeypatch.setenv("THRESHER_PORT", "9002")
    assert Settings().port == 9002
    assert Settings(port=9003).port == 9003  # explicit arguments win


def test_public_mode_needs_admin_token(settings: Settings) -> None:
    with pytest.raises(ValidationError, match="admin token"):
        Settings(public=True)
    assert Settings(public=True, admin_token="x").public


def test_unsafe_settings_is_a_value_error() -> None:
    assert issubclass(UnsafeSettings, ValueError)


def test_bad_values_are_refused(settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        Settings(idle_timeout_minutes=0)
    with pytest.raises(ValidationError):
        Settings(max_tokens_default=5000)
    (tmp_path / "thresher.toml").write_text("no_such_setting = 1\n")
    with pytest.raises(ValidationError, match="no_such_setting"):
        Settings()


def test_salt_is_generated_once_and_kept(settings: Settings) -> None:
    first = settings.salt()
    assert len(first) == 32 and settings.salt() == first
    assert (settings.data_dir / "salt").read_text() == first
    assert Settings(data_dir=settings.data_dir, client_salt="fixed").salt() == "fixed"


def test_the_judge_threshold_is_auto_by_default_and_a_number_overrides(settings, monkeypatch) -> None:
    from thresher.reward import Head, default_head_path

    assert Settings(data_dir=settings.data_dir).judge_threshold == "auto"
    shipped = Head.load(default_head_path()).threshold
    assert Settings(data_dir=settings.data_dir).threshold() == shipped  # the embedded model's calibrated one
    assert Settings(data_dir=settings.data_dir, judge_threshold=6.5).threshold() == 6.5
    monkeypatch.setenv("THRESHER_JUDGE_THRESHOLD", "7")
    assert Settings(data_dir=settings.data_dir).threshold() == 7.0
    monkeypatch.setenv("THRESHER_JUDGE_THRESHOLD", "AUTO")
    assert Settings(data_dir=settings.data_dir).judge_threshold == "auto"
    for bad in ("eleven", "0.5", "11"):
        monkeypatch.setenv("THRESHER_JUDGE_THRESHOLD", bad)
        with pytest.raises(ValueError, match="judge_threshold"):
            Settings(data_dir=settings.data_dir)
    # a judge without a calibration of its own (another engine, no head) falls back to 8
    monkeypatch.delenv("THRESHER_JUDGE_THRESHOLD")
    assert Settings(data_dir=settings.data_dir, model="openai:http://127.0.0.1:9/v1#x").threshold() == 8.0
