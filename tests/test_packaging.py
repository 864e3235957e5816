"""The five top-level packages are the repo's own and are exactly what the wheel installs.

``tables`` (PyTables) and ``agents`` are also names of PyPI packages: if one of those were
installed and shadowed ours, imports would silently pick up someone else's code.
"""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

import pytest
from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("streams", "agents", "tables", "producers", "api")


def _include() -> list[str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        include: list[str] = tomllib.load(f)["tool"]["setuptools"]["packages"]["find"]["include"]
    return include


@pytest.mark.parametrize(
    "name",
    [
        # The app, settings, topics and schemas.
        "streams",
        # Shadowed by the PyPI `agents` package if that were first on the path.
        "agents",
        # Shadowed by PyTables (`pip install tables`) if that were first on the path.
        "tables",
        # The publisher SDK.
        "producers",
        # The admin API.
        "api",
    ],
)
def test_imported_package_is_the_repos_own(name: str) -> None:
    """Importing the package loads it from this repository, not from site-packages."""
    module = importlib.import_module(name)

    assert module.__file__ is not None
    assert (ROOT / name / "__init__.py") == Path(module.__file__).resolve()


def test_include_list_names_exactly_the_five_packages() -> None:
    """pyproject's packages.find include list names the five packages and their sub-packages."""
    expected = sorted([*PACKAGES, *(f"{p}.*" for p in PACKAGES)])

    actual = sorted(_include())

    assert expected == actual


def test_include_list_finds_no_other_top_level_package() -> None:
    """The include list, applied to the repo, installs the five packages and nothing else."""
    found = find_packages(where=str(ROOT), include=_include())

    actual = {name.split(".")[0] for name in found}

    assert set(PACKAGES) == actual
