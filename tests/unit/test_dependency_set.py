"""The tested dependency set stays consistent with what it promises: the README's two set-up
commands install from the constraints file (the first without the test extras), CI runs the
README's test command with the same system packages, every requirement of ``setup.cfg`` is
pinned in ``packaging/constraints.txt`` inside its range, and the lowest set holds each of
pictofs's own dependencies at the lower bound its range names."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```sh\n(.*?)\n```", text, flags=re.S)[:2]


def requirements(extra: str | None = None) -> list[Requirement]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    raw = (config["options.extras_require"][extra] if extra
           else config["options"]["install_requires"])
    return [Requirement(line) for line in raw.strip().splitlines()]


def pins(name: str) -> dict[str, str]:
    found = {}
    for line in (ROOT / "packaging" / name).read_text().splitlines():
        if line and not line.startswith("#"):
            package, _, version = line.partition("==")
            assert version, f"{name}: {line!r} is not an exact pin"
            found[canonicalize_name(package)] = version
    return found


def test_the_readme_installs_the_tested_set_and_the_first_command_no_test_extras() -> None:
    main_job, tests = readme_commands()
    assert "pip install -c packaging/constraints.txt -e . " in main_job
    assert "[test]" not in main_job
    assert "pip install -c packaging/constraints.txt -e '.[test]'" in tests
    assert tests.endswith(".venv/bin/python -m pytest")


def test_ci_runs_the_readme_test_command_with_its_system_packages() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    tests = readme_commands()[1]
    apt = re.search(r"apt-get install -y (.*?) &&", tests)
    assert apt is not None
    ci_apt = re.search(r"apt-get install -y -qq (.*?)\s*>/dev/null", ci, flags=re.S)
    assert ci_apt is not None
    assert set(apt.group(1).split()) <= set(ci_apt.group(1).replace("\\", " ").split())
    assert '"$venv/bin/python" -m pytest' in ci and "venv=.venv;" in ci


@pytest.mark.parametrize("extra", [None, "test"])
def test_every_requirement_is_pinned_inside_its_range(extra: str | None) -> None:
    pinned = pins("constraints.txt")
    for requirement in requirements(extra):
        version = pinned.get(canonicalize_name(requirement.name))
        assert version is not None, f"{requirement.name} is not in constraints.txt"
        assert requirement.specifier.contains(version), (requirement, version)


def test_every_runtime_requirement_has_an_upper_bound() -> None:
    for requirement in requirements():
        assert any(spec.operator in ("<", "<=", "==") for spec in requirement.specifier), \
            requirement


def test_the_lowest_set_holds_each_dependency_at_its_lower_bound() -> None:
    lowest = pins("constraints-lowest.txt")
    for requirement in requirements():
        [lower] = [spec.version for spec in requirement.specifier if spec.operator == ">="]
        assert lowest[canonicalize_name(requirement.name)] == lower, requirement
