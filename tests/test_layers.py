"""The layering (pyproject.toml [tool.importlinter]): no upward import, no import cycle, generate names no
method, and core code imports the mini world only through a list of exceptions that may only shrink."""
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT = Path(sys.executable).parent / "lint-imports"

# the world exceptions when the contract was written; the list in pyproject.toml may lose entries, never gain one
WORLD_EXCEPTIONS_AT_START = {
    "igmu.evaluation.judges -> igmu.world.judges",
    "igmu.evaluation.judges -> igmu.world.vocab",
    "igmu.evaluation.clip_judge -> igmu.world.judges",
    "igmu.evaluation.evaluate -> igmu.world.judges",
    "igmu.tasks.mini -> igmu.world.prompts",
    "igmu.tasks.planner -> igmu.world.captions",
    "igmu.tasks.planner -> igmu.world.prompts",
    "igmu.tasks.planner -> igmu.world.render",
    "igmu.tasks.planner -> igmu.world.vocab",
}


def _lint(src: Path, config: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(src))
    return subprocess.run([str(LINT), str(config), "--no-cache"], capture_output=True, text=True,
                          env=env, cwd=str(config.parent))


def _contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_the_import_contracts_hold():
    res = _lint(ROOT / "src", ROOT / "pyproject.toml")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "0 broken" in res.stdout


def test_world_exceptions_only_shrink():
    world = [c for c in _contracts() if c.get("forbidden_modules") == ["igmu.world"]]
    assert len(world) == 1
    assert set(world[0].get("ignore_imports", [])) <= WORLD_EXCEPTIONS_AT_START
    assert "igmu.models" in world[0]["source_modules"] and "igmu.cli" not in world[0]["source_modules"]


@pytest.mark.parametrize("file, line, broken", [
    # an upward import (models importing the artifacts layer above it): the import circle of old
    ("models/load.py", "from ..artifacts import load_model\n", "layers"),
    # generate naming a method
    ("generate.py", "from .methods.sld import sld_sample\n", "generate names no method"),
    # a new core import of the mini world
    ("methods/common.py", "from ..world import vocab\n", "mini world"),
])
def test_the_contracts_catch_a_violation(tmp_path, file, line, broken):
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "igmu", src / "igmu", ignore=shutil.ignore_patterns("assets", "__pycache__"))
    target = src / "igmu" / file
    target.write_text(line + target.read_text())
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    res = _lint(src, tmp_path / "pyproject.toml")
    assert res.returncode != 0
    assert broken in res.stdout.split("Broken contracts")[1]
