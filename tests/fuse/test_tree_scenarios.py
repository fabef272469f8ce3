"""The shared filesystem scenarios (``tests/scenarios.py``) through a real mount: the same
functions ``tests/core/test_tree_scenarios.py`` runs against the core in-process, here
through the kernel, libfuse and the FUSE adapter (one fresh dataset mount per scenario)."""

from __future__ import annotations

from typing import Any, Callable

import pytest

from scenarios import SCENARIOS, Driver, Service, scenario_id

from .mountdriver import MountDriver

pytestmark = pytest.mark.fuse

WRITE_BACK = ("--write-back", "0.2s")


@pytest.mark.parametrize("scenario", SCENARIOS, ids=scenario_id)
def test_scenario(scenario: Callable[[Driver, Service], None], mount: Any, client: Any,
                  dataset: Any) -> None:
    m = mount(dataset.name, *WRITE_BACK)
    scenario(MountDriver(m), Service(client, dataset))
