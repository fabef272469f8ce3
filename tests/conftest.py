"""The test harness every suite shares.

- The whole session runs with ``HOME`` and every ``XDG_*`` pointed at a temporary folder and
  ``PICTOGRAPH_*`` removed, so no test can touch a real account, the user's config file or the
  user's embedded server. Tests that need a key set it explicitly.
- ``server``: one reference server per test session (``pictofs serve`` in a subprocess on a
  free port, its own data folder), with per-route request counts read from ``/metrics``.
- ``client``: a ``pictofs.api.Client`` bound to that server with its owner key.
- ``hosted_server``: a second server with ``--profile hosted`` (answers as the hosted service
  is known to); ``profile_server`` / ``profile_client`` run a test once against each.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterator

import pytest

from harness import ServerHandle, start_server, stop_server

API = "/api/v1/developer"


def pytest_configure(config: pytest.Config) -> None:
    """Isolate the environment before any test module is imported."""
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="pictofs-tests-"))
    env = {
        "HOME": root / "home",
        "XDG_CACHE_HOME": root / "cache",
        "XDG_STATE_HOME": root / "state",
        "XDG_DATA_HOME": root / "data",
        "XDG_CONFIG_HOME": root / "config",
        "XDG_RUNTIME_DIR": root / "run",
    }
    for name, path in env.items():
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o700)
        os.environ[name] = str(path)
    for name in list(os.environ):
        if name == "PICTOFS_LONG":  # the tests' own switch (long fuzz/differential profiles)
            continue
        if name.startswith("PICTOGRAPH_") or name.startswith("PICTOFS_"):
            del os.environ[name]
    config._pictofs_root = root  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def server(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    """One reference server for the whole test session; for the tests that run against
    both profiles (``pytest_generate_tests``), one ``--profile hosted`` server as well."""
    profile = getattr(request, "param", "reference")
    root = tmp_path_factory.mktemp(f"server-{profile}")
    extra = ("--profile", profile) if profile != "reference" else ()
    handle = start_server(root / "data", root / "server.log", *extra)
    yield handle
    code = stop_server(handle)
    assert code == 0, f"server exited {code}: {handle.log_path.read_text()}"


@pytest.fixture(scope="session")
def hosted_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    """One server with ``--profile hosted`` for the whole session (started on first use):
    where the hosted service is known to differ, it answers as the hosted service does."""
    root = tmp_path_factory.mktemp("hosted-server")
    handle = start_server(root / "data", root / "server.log", "--profile", "hosted")
    yield handle
    code = stop_server(handle)
    assert code == 0, f"hosted server exited {code}: {handle.log_path.read_text()}"


PROFILES = ("reference", "hosted")
# Suites that run whole against both profiles; elsewhere a test opts in with
# ``@pytest.mark.profiles("reference", "hosted")``, and a test of a reference-only
# behaviour in these suites opts out with ``@pytest.mark.profiles("reference")``.
BOTH_PROFILE_SUITES = ("contract", "mirror")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test that uses the ``server`` fixture gets it as a session-scoped parameter
    (``[reference]``, ``[hosted]``), so that pytest keeps one server per profile for the
    whole session and groups the tests by it."""
    if "server" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("profiles")
    if marker is not None:
        profiles = tuple(marker.args)
    elif Path(str(metafunc.definition.path)).parent.name in BOTH_PROFILE_SUITES:
        profiles = PROFILES
    else:
        profiles = ("reference",)
    metafunc.parametrize("server", profiles, indirect=True, scope="session")


@pytest.fixture()
def client(server: ServerHandle):  # type: ignore[no-untyped-def]
    """A ``pictofs.api.Client`` with the owner key of the session server."""
    from pictofs.api import Client

    return Client(api_key=server.key, base_url=server.base_url)


@pytest.fixture()
def dataset(client, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """A fresh dataset named after the test."""
    import uuid

    name = re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name)[:60] + "-" + uuid.uuid4().hex[:6]
    return client.projects.create(name)
