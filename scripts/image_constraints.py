"""The Docker image's pins (docker/constraints.txt): every distribution the project's runtime
dependencies pull in, at the version installed in the venv the tests ran with.

pyproject.toml pins the direct dependencies only; without these, an image built later would get
whatever aiohttp, yarl or mode-streaming were newest then, not what was tested. After changing
the dependencies, run `.venv/bin/python scripts/image_constraints.py` and commit the file;
`tests/test_docker_image.py` fails until it matches the venv.
"""

from __future__ import annotations

import importlib.metadata as metadata
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / "docker" / "constraints.txt"
# The image's interpreter and platform (docker/Dockerfile: python:3.11-slim-bookworm), for the
# dependencies' environment markers; the venv must run the same Python minor version.
IMAGE_ENVIRONMENT = {
    "python_version": "3.11",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "os_name": "posix",
    "extra": "",
}
HEADER = (
    "# Written by scripts/image_constraints.py from the tested venv: the runtime dependencies'\n"
    "# whole closure (CPython 3.11, Linux), used by docker/Dockerfile as pip constraints.\n"
)


def runtime_pins() -> dict[str, str]:
    """Name → installed version for the closure of pyproject's runtime dependencies."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pending = [Requirement(line) for line in project["dependencies"]]
    pins: dict[str, str] = {}
    while pending:
        requirement = pending.pop()
        if requirement.marker is not None and not requirement.marker.evaluate(IMAGE_ENVIRONMENT):
            continue
        name = requirement.name.lower().replace("_", "-")
        if name in pins:
            continue
        dist = metadata.distribution(requirement.name)
        pins[name] = dist.version
        pending.extend(Requirement(line) for line in dist.requires or [])
    return dict(sorted(pins.items()))


def render(pins: dict[str, str]) -> str:
    return HEADER + "".join(f"{name}=={version}\n" for name, version in pins.items())


if __name__ == "__main__":
    CONSTRAINTS.write_text(render(runtime_pins()))
    print(f"wrote {CONSTRAINTS.relative_to(ROOT)}", file=sys.stderr)
