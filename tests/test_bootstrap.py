"""scripts/bootstrap.sh: an interpreter it cannot use is one line that says why."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bootstrap(tmp_path: Path, python: str) -> subprocess.CompletedProcess[str]:
    """The script on a copy of the repository's top (so that no .venv of the repository's is
    touched), with no venv yet: it goes on to create one with `python`."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "bootstrap.sh", tmp_path / "scripts")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return subprocess.run(
        ["bash", str(tmp_path / "scripts" / "bootstrap.sh")],
        env={"PATH": "/usr/bin:/bin", "PYTHON": python},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("python", ["/bin/false", "/bin/true"])
def test_an_interpreter_that_does_not_run_is_named_as_such(tmp_path: Path, python: str) -> None:
    """/bin/false was `bootstrap: ERROR:  is too old`, the version blank."""
    result = _bootstrap(tmp_path, python)
    assert (result.returncode, result.stderr) == (
        1,
        f"bootstrap: ERROR: '{python}' could not be run as Python (it gave no version); "
        "install Python >= 3.11 or set PYTHON\n",
    )
    assert not (tmp_path / ".venv" / "pyvenv.cfg").exists()


def test_an_old_interpreter_is_named_with_its_version(tmp_path: Path) -> None:
    old = tmp_path / "python3.9"
    old.write_text('#!/bin/sh\ncase "$*" in *version_info*) echo 3.9.2 ;; esac\nexit 0\n')
    old.chmod(0o755)
    result = _bootstrap(tmp_path, str(old))
    assert (result.returncode, result.stderr) == (
        1,
        "bootstrap: ERROR: Python 3.9.2 is too old: Python >= 3.11 is required (set PYTHON=...)\n",
    )
