"""Fixtures of the in-process tree tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from pictofs.api.remote import ApiRemote
from pictofs.config import Connection

from .treekit import TreeDriver, build


@pytest.fixture()
def remote(server) -> Iterator[ApiRemote]:  # type: ignore[no-untyped-def]
    """The client side of the upload queue against the session server: short retries, so
    that a recovery test that goes wrong fails fast."""
    api = ApiRemote(Connection(server.base_url, server.key, "argument"), timeout=30.0,
                    retries=3, retry_max_wait=0.2)
    yield api
    api.close()


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
