"""The `thresher` command: help, version, and clear errors for bad settings or a missing model."""

from __future__ import annotations

from typer.testing import CliRunner

from thresher import __version__
from thresher.cli import app

runner = CliRunner()


def test_version_and_help(settings) -> None:
    assert runner.invoke(app, ["--version"]).output.strip() == f"thresher {__version__}"
    result = runner.invoke(app, ["serve", "--help"])
    assert result.exit_code == 0 and "--model" in result.output


def test_serve_refuses_public_mode_without_admin_token(settings) -> None:
    result = runner.invoke(app, ["serve", "--public"])
    assert result.exit_code == 2
    assert "admin token" in result.output


def test_serve_reports_an_unloadable_model(settings, tmp_path) -> None:
    result = runner.invoke(app, ["serve", "--model", f"llama.cpp:{tmp_path / 'missing.gguf'}"])
    assert result.exit_code == 1
    assert "no GGUF file" in result.output
