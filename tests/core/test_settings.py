"""Settings: file < environment < options, and errors that name file, field and problem."""

from __future__ import annotations

import pytest

from dcpue.errors import ConfigError
from dcpue.settings import load_settings


def test_defaults_need_no_file(monkeypatch):
    monkeypatch.delenv("DCPUE_CONFIG", raising=False)
    settings = load_settings()
    assert settings.engine.target_pue == 1.2
    assert settings.bus.kind == "embedded"
    assert settings.store.kind == "file"


def test_environment_beats_file_and_options_beat_both(tmp_path, monkeypatch):
    config = tmp_path / "dcpue.yaml"
    config.write_text("engine:\n  target_pue: 1.3\n  coverage_threshold: 0.8\nhttp:\n  port: 9000\n")
    monkeypatch.setenv("DCPUE_ENGINE__TARGET_PUE", "1.25")
    settings = load_settings(config, http={"port": 9100})
    assert settings.engine.target_pue == 1.25  # env over file
    assert settings.engine.coverage_threshold == 0.8  # file value kept
    assert settings.http.port == 9100  # option over file


def test_config_file_from_environment(tmp_path, monkeypatch):
    config = tmp_path / "c.yaml"
    config.write_text("log_level: DEBUG\n")
    monkeypatch.setenv("DCPUE_CONFIG", str(config))
    assert load_settings().log_level == "DEBUG"


def test_bad_value_names_file_field_and_problem(tmp_path):
    config = tmp_path / "dcpue.yaml"
    config.write_text("engine:\n  target_pue: 0.9\n")
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    message = str(info.value)
    assert str(config) in message
    assert "engine.target_pue" in message
    assert "greater than 1" in message


def test_unknown_setting_is_an_error_not_ignored(tmp_path):
    config = tmp_path / "dcpue.yaml"
    config.write_text("engine:\n  target_peu: 1.2\n")
    with pytest.raises(ConfigError, match=r"field 'engine.target_peu': unknown setting"):
        load_settings(config)


def test_bad_environment_value(monkeypatch):
    monkeypatch.setenv("DCPUE_HTTP__PORT", "eighty")
    with pytest.raises(ConfigError, match="http.port"):
        load_settings()


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_settings(bad)
