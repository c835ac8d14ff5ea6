"""The Docker image installs what the tests ran with (docker/constraints.txt)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "image_constraints.py"


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="the image runs Python 3.11")
def test_the_image_constraints_pin_the_tested_runtime_closure() -> None:
    spec = importlib.util.spec_from_file_location("image_constraints", SCRIPT)
    assert spec is not None and spec.loader is not None
    pins = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pins)
    expected = pins.render(pins.runtime_pins())
    assert (ROOT / "docker" / "constraints.txt").read_text() == expected, (
        "docker/constraints.txt is stale: run .venv/bin/python scripts/image_constraints.py"
    )
    assert "faust-streaming==0.15.3" in expected and "yarl==" in expected  # direct and transitive
