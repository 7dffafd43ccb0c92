"""The README's quickstart runs as written on a fresh machine: every command of its first block, in a new folder,
and its Python API block; every other `sac` command it shows at least parses (no flag the program does not
have)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from sac.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def quickstart_commands() -> list[str]:
    """The commands of the first ```bash block after the "## Quickstart" heading, comments dropped."""
    section = README.read_text().split("## Quickstart", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert block, "README has no bash block under ## Quickstart"
    return [line.split("  #")[0].strip() for line in block[1].splitlines() if line.strip()]


def test_quickstart_block_uses_only_bundled_inputs():
    commands = quickstart_commands()
    assert commands and all(command.startswith("sac ") for command in commands)
    assert not any("$" in command for command in commands), "a fresh machine has no environment variables set"


@pytest.mark.slow
@pytest.mark.parametrize("command", quickstart_commands())
def test_quickstart_command_runs(command, tmp_path):
    argv = shlex.split(command)
    sac = Path(sys.executable).with_name("sac")
    done = subprocess.run(
        [str(sac), *argv[1:]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    if "-o" in argv:
        out = tmp_path / argv[argv.index("-o") + 1]
        stem = argv[argv.index("--sample") + 1]
        assert (out / f"{stem}_mask.png").is_file()
        if "--instances" in argv:
            assert all((out / f"{stem}{s}").is_file() for s in ("_labels.tif", "_nuclei.csv", ".geojson"))
    else:
        assert re.search(r"^dice\s+0\.\d+", done.stdout, re.MULTILINE), done.stdout


@pytest.mark.slow
def test_python_api_block_runs_as_written(tmp_path):
    section = README.read_text().split("## Python API", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert block, "README has no python block under ## Python API"
    done = subprocess.run(
        [sys.executable, "-c", block[1] + "\nassert labels.max() > 0 and mask.any()"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]


def readme_sac_commands() -> list[str]:
    """Every ``sac ...`` line of the README's bash blocks, continuation lines joined, comments dropped."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.DOTALL)
    lines = [
        line.split("  #")[0].strip() for block in blocks for line in block.replace("\\\n", " ").splitlines()
    ]
    return [line for line in lines if line.startswith("sac ")]


@pytest.mark.parametrize("command", readme_sac_commands())
def test_every_readme_command_parses(command):
    try:
        build_parser().parse_args(shlex.split(command)[1:])
    except SystemExit as error:
        pytest.fail(f"README command does not parse ({error.code}): {command}")
