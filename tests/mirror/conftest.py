"""Fixtures of the mirror tests (helpers in ``mirrorkit``)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from harness import ServerHandle

from .mirrorkit import Mirror


@pytest.fixture()
def mirror(server: ServerHandle, tmp_path: Path) -> Iterator[Callable[..., Mirror]]:
    """``mirror(local, target, *options, env=...)`` → a ``Mirror``; stopped at teardown."""
    made: list[Mirror] = []

    def make(local: Path, target: str, *options: str, env: dict[str, str] | None = None
             ) -> Mirror:
        m = Mirror(server, local, target, *options, log_path=tmp_path / f"mirror{len(made)}.log",
                   env=env)
        made.append(m)
        return m

    yield make
    for m in made:
        if m.process is not None and m.process.poll() is None:
            m.process.kill()
            m.process.wait()
