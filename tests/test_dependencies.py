"""The lock files hold every library the package imports, and pin every one pyproject.toml declares.

A library that only came in with the test tools (as cryptography once did) is missing on a gateway
installed from locks/runtime.txt, and fails there the first time it is used, not in the tests.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def name(requirement: str) -> str:
    """The distribution's normalised name (PEP 503) in a requirement such as ``RPi.GPIO>=0.7``."""
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group()).lower()


RUNTIME = {name(r) for r in PROJECT["dependencies"]}
PI = {name(r) for r in PROJECT["optional-dependencies"]["pi"]}


def imported_libraries() -> dict[str, Path]:
    """Each top-level module imported by name in edgegw/ and drivers/ (not the standard library's), with a
    file that imports it."""
    found: dict[str, Path] = {}
    for path in sorted([*REPO.glob("edgegw/**/*.py"), *REPO.glob("drivers/*.py")]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top not in sys.stdlib_module_names and top not in {"edgegw", "edgegw_drivers"}:
                    found.setdefault(top, path)
    return found


def pinned(lock: str) -> set[str]:
    return {name(line) for line in (REPO / "locks" / lock).read_text().splitlines() if "==" in line}


def test_every_imported_library_is_in_the_lock():
    # In the runtime lock: declared, or pulled in by what is (pydantic_core by pydantic); in the [pi] lock
    # for the Pi's pins and SPI. The Pi's own libraries are not installed here: their distributions by name.
    distributions = {"RPi": ["RPi.GPIO"], "spidev": ["spidev"], **packages_distributions()}
    locked = pinned("runtime.txt") | pinned("pi.txt")
    missing = {module: str(path.relative_to(REPO)) for module, path in imported_libraries().items()
               if not {name(d) for d in distributions.get(module, [module])} & locked}
    assert missing == {}


def test_the_locks_pin_every_declared_dependency():
    # A dependency added to pyproject.toml without running scripts/lock.sh is missing from the lock.
    assert RUNTIME - pinned("runtime.txt") == set()
    assert (RUNTIME | PI) - pinned("pi.txt") == set()
    assert "setuptools" in pinned("build.txt")
