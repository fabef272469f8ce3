"""Fixtures of the in-process tree tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from .treekit import TreeDriver, build


@pytest.fixture()
def tree_of(server, dataset, tmp_path: Path  # type: ignore[no-untyped-def]
            ) -> Iterator[Callable[[], tuple[TreeDriver, Any]]]:
    """``tree_of()`` → (TreeDriver, Vfs) of a dataset mount of ``dataset``, built when
    called (after the test put on the service what it needs); closed at teardown, where the
    test fails if the core raised anything that is not a domain error."""
    built: list[Any] = []
    drivers: list[TreeDriver] = []

    def make() -> tuple[TreeDriver, Any]:
        tree = build(server, dataset, tmp_path / f"tree{len(built)}")
        built.append(tree)
        drivers.append(TreeDriver(tree.vfs))
        return drivers[-1], tree.vfs

    yield make
    for tree in built:
        tree.close(timeout=10)
    bugs = [bug for driver in drivers for bug in driver.bugs]
    assert not bugs, f"unexpected exceptions in the core: {bugs!r}"
