"""The shared filesystem scenarios (``tests/scenarios.py``) against the core in-process:
the tree ``pictofs mount`` builds (``mounting.build_tree``), driven by the calls the FUSE
adapter makes, against the session's reference server. No kernel, no ``/dev/fuse``, no root;
``tests/fuse/test_tree_scenarios.py`` runs the same functions through a real mount.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from scenarios import SCENARIOS, Driver, Service, scenario_id

from .treekit import TreeDriver, build


@pytest.fixture()
def tree_fs(server, dataset, tmp_path: Path) -> Iterator[TreeDriver]:  # type: ignore[no-untyped-def]
    tree = build(server, dataset, tmp_path)
    driver = TreeDriver(tree.vfs)
    try:
        yield driver
    finally:
        tree.close(timeout=10)
    assert not driver.bugs, f"unexpected exceptions in the core: {driver.bugs!r}"


@pytest.mark.parametrize("scenario", SCENARIOS, ids=scenario_id)
def test_scenario(scenario: Callable[[Driver, Service], None], tree_fs: TreeDriver,
                  client: Any, dataset: Any) -> None:
    scenario(tree_fs, Service(client, dataset))


NO_FUSE_SCRIPT = """
import sys, tempfile, types
from pathlib import Path
from pictofs.api import Client
from tests.core.treekit import TreeDriver, build
base_url, key, name = sys.argv[1:4]
server = types.SimpleNamespace(base_url=base_url, key=key)
dataset = Client(api_key=key, base_url=base_url).projects.get(name)
tree = build(server, dataset, Path(tempfile.mkdtemp()))
try:
    TreeDriver(tree.vfs).listdir("/")
finally:
    tree.close(timeout=10)
loaded = sorted(m for m in sys.modules if m.startswith(("mfusepy", "fuse", "pictofs.fs.")))
assert loaded == ["pictofs.fs.errno_map"], loaded
"""


def test_the_tree_needs_no_fuse(server, dataset) -> None:  # type: ignore[no-untyped-def]
    """Building and driving the tree imports no FUSE binding, so it runs where there is no
    libfuse and no /dev/fuse (checked in a fresh interpreter)."""
    tests = Path(__file__).resolve().parents[1]
    path = os.pathsep.join([str(tests), str(tests.parent), os.environ.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", NO_FUSE_SCRIPT, server.base_url,
                             server.key, dataset.name], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PYTHONPATH": path},
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
