"""The documentation stays true to the code.

- Every Python block of docs/EXTENDING.md and docs/APPS.md runs, in order, in a fresh interpreter (the examples carry
  their own asserts); a block announced by `<!-- file: NAME -->` is written to NAME in the working folder
  instead (a plugin file the following blocks load).
- Every `fanout ...` command in a bash block of the guides parses with the real CLI, and when it
  names a shipped config its overrides load and validate with `rl.config.load_config`.
- Every `--dry-run` launch shown in the guides runs and exits 0.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from rl.cli import build_parser
from rl.config import load_config

ROOT = Path(__file__).resolve().parents[1]
GUIDES = ["GETTING_STARTED.md", "SCALING.md", "EXTENDING.md"]


def code_blocks(name: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", (ROOT / "docs" / name).read_text(), re.S)


def shell_commands(name: str) -> list[list[str]]:
    """Commands of the bash blocks: continuations joined, comments and VAR=value prefixes dropped."""
    commands = []
    for block in code_blocks(name, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
                words.pop(0)
            if words:
                commands.append(words)
    return commands


def python_blocks_and_files(name: str) -> tuple[list[str], dict[str, str]]:
    """The Python blocks to run, and {file name: text} of the blocks announced as files."""
    text = (ROOT / "docs" / name).read_text()
    blocks, files = [], {}
    for match in re.finditer(r"(?:<!-- file: ([\w.]+) -->\n)?```python\n(.*?)```", text, re.S):
        if match.group(1):
            files[match.group(1)] = match.group(2)
        else:
            blocks.append(match.group(2))
    return blocks, files


def test_extending_examples_run(tmp_path):
    blocks, files = python_blocks_and_files("EXTENDING.md")
    program = "\n\n".join(blocks)
    assert "register_reward" in program and "register_tool" in program
    assert "my_plugin.py" in files and "plugins=[./my_plugin.py]" in program
    for file_name, text in files.items():
        (tmp_path / file_name).write_text(text)
    environment = {**os.environ, "TMPDIR": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", program],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_apps_examples_run(tmp_path):
    blocks, _ = python_blocks_and_files("APPS.md")
    program = "\n\n".join(blocks)
    assert "verify_task" in program and "mcp_servers=[apps]" in program
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", program], cwd=tmp_path, env=environment, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("name", GUIDES)
def test_fanout_commands_parse_and_their_configs_load(name, monkeypatch):
    monkeypatch.delenv("FANOUT_ALLOW_VLLM_CPU", raising=False)
    parser = build_parser()
    fanout_commands = [words[1:] for words in shell_commands(name) if words[0] == "fanout"]
    for arguments in fanout_commands:
        if "--help" in arguments or "--version" in arguments:  # print and exit, no config to check
            continue
        parsed = parser.parse_args(arguments)  # SystemExit (a test failure) on an unknown command or flag
        config_path = getattr(parsed, "config", None)
        if config_path and (ROOT / config_path).is_file():
            load_config(ROOT / config_path, parsed.overrides)


@pytest.mark.parametrize("name", GUIDES)
def test_dry_runs_in_the_guides_succeed(name):
    for words in shell_commands(name):
        script = next((word for word in words if word.startswith("scripts/")), None)
        if script is None or "--dry-run" not in words:
            continue
        arguments = words[words.index(script) + 1 :]
        result = subprocess.run(
            ["bash", str(ROOT / script), *arguments],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            env={k: v for k, v in os.environ.items() if not k.startswith("SLURM_")},
        )
        assert result.returncode == 0, (words, result.stderr)
        assert result.stdout.startswith("+ "), words


def test_guides_name_only_existing_scripts_and_configs():
    for name in GUIDES:
        text = (ROOT / "docs" / name).read_text()
        for path in set(re.findall(r"\b((?:scripts|configs)/[\w./-]+\.(?:sh|sbatch|yaml|json))", text)):
            assert (ROOT / path).is_file(), f"docs/{name} names {path}, which does not exist"
