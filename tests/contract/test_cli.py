"""The command line as a user runs it: ``pictofs`` in a subprocess, real servers, exit codes.

Covers ``--version``, ``datasets list|create``, the admin verbs of ``serve``, the embedded
default (start once, reuse, ``--stop``), and that user errors print one line and exit non-zero
without a traceback.
"""

from __future__ import annotations

import json
import os
import signal
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

from pictofs import __version__


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pictofs", *args], capture_output=True,
                          text=True, timeout=timeout, env=env or dict(os.environ),
                          stdin=subprocess.DEVNULL)


def account_env(server, key: str | None = None) -> dict[str, str]:  # type: ignore[no-untyped-def]
    env = dict(os.environ)
    env["PICTOGRAPH_API_KEY"] = key or server.key
    env["PICTOGRAPH_BASE_URL"] = server.base_url
    return env


def assert_user_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pictofs: "), result.stderr
    for word in words:
        assert word in lines[0]


def test_version():
    result = run("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"pictofs {__version__}"


def test_no_command_prints_usage_and_exits_2():
    result = run()
    assert result.returncode == 2 and "usage:" in result.stderr


def test_datasets_create_and_list(server):
    env = account_env(server)
    created = run("datasets", "create", "cli-cars", env=env)
    assert created.returncode == 0, created.stderr
    assert created.stdout.startswith("created dataset cli-cars (")
    listing = run("datasets", "list", env=env)
    assert listing.returncode == 0, listing.stderr
    rows = [line.split() for line in listing.stdout.splitlines()]
    assert rows[0] == ["NAME", "IMAGES", "SIZE", "ID"]
    assert ["cli-cars", "0", "0"] == [r for r in rows if r[0] == "cli-cars"][0][:3]


def test_datasets_create_twice(server):
    env = account_env(server)
    assert run("datasets", "create", "cli-twice", env=env).returncode == 0
    assert_user_error(run("datasets", "create", "cli-twice", env=env), "exists")
    again = run("datasets", "create", "cli-twice", "--exist-ok", env=env)
    assert again.returncode == 0 and "exists" in again.stdout


def test_rejected_key_is_one_line(server):
    result = run("datasets", "list", env=account_env(server, "pk_live_wrong"))
    assert_user_error(result)
    assert "pk_live_wrong" not in result.stderr + result.stdout


def test_viewer_cannot_create(server):
    viewer = server.create_key("viewer")
    assert viewer.startswith("pk_live_")
    assert_user_error(run("datasets", "create", "cli-viewer", env=account_env(server, viewer)))


def test_key_file_readable_by_others_is_refused(server, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text(server.key + "\n")
    os.chmod(key_file, 0o644)
    env = account_env(server)
    del env["PICTOGRAPH_API_KEY"]
    assert_user_error(run("datasets", "list", "--key-file", str(key_file), env=env), "chmod 600")
    os.chmod(key_file, 0o600)
    assert run("datasets", "list", "--key-file", str(key_file), env=env).returncode == 0


def test_unreachable_service_is_one_line(tmp_path):
    env = dict(os.environ, PICTOGRAPH_API_KEY="pk_live_x", PICTOGRAPH_BASE_URL="http://127.0.0.1:9")
    assert_user_error(run("datasets", "list", env=env, timeout=120))


def test_base_url_without_key_is_refused(tmp_path):
    env = dict(os.environ, PICTOGRAPH_BASE_URL="http://127.0.0.1:9")
    env.pop("PICTOGRAPH_API_KEY", None)
    assert_user_error(run("datasets", "list", env=env), "no API key")


# Reference only: checks the new key with GET /me.
@pytest.mark.profiles("reference")
def test_serve_admin_verbs(server):
    org_id = server.create_org("cli-other-org")
    assert org_id
    key = server.create_key("member", "cli-other-org")
    me = requests.get(server.base_url + "/api/v1/developer/me", headers={"X-API-Key": key},
                      timeout=10).json()["data"]
    assert me["organization_name"] == "cli-other-org" and me["role"] == "member"
    bad_role = run("serve", "--data", str(server.data_dir), "--create-key", "emperor")
    assert_user_error(bad_role)
    bad_org = run("serve", "--data", str(server.data_dir), "--create-key", "viewer",
                  "--org", "no-such-org")
    assert_user_error(bad_org)


def embedded_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment with no account anywhere (the embedded default), and its data folder."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PICTOGRAPH_")}
    env.update(HOME=str(home), XDG_DATA_HOME=str(tmp_path / "data"))
    return env, tmp_path / "data" / "pictofs" / "server"


def test_embedded_default_starts_once_and_stops(tmp_path):
    env, data_dir = embedded_env(tmp_path)
    try:
        first = run("datasets", "create", "embedded-one", env=env)
        assert first.returncode == 0, first.stderr
        assert "no account configured: using the local server at http://127.0.0.1:" in first.stderr
        assert f"(data: {data_dir})" in first.stderr
        info = json.loads((data_dir / "server.json").read_text())
        assert (data_dir / "owner.key").stat().st_mode & 0o777 == 0o600
        assert data_dir.stat().st_mode & 0o777 == 0o700

        second = run("datasets", "list", env=env)
        assert second.returncode == 0 and "embedded-one" in second.stdout
        assert json.loads((data_dir / "server.json").read_text())["pid"] == info["pid"]
    finally:
        stopped = run("serve", "--stop", env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert not (data_dir / "server.json").exists()
    with pytest.raises(requests.ConnectionError):
        requests.get(info["base_url"] + "/healthz", timeout=2)
    assert run("serve", "--stop", env=env).returncode == 1


def test_server_restart_keeps_data(tmp_path):
    from harness import start_server, stop_server

    handle = start_server(tmp_path / "data", tmp_path / "server.log")
    try:
        headers = {"X-API-Key": handle.key}
        api = handle.base_url + "/api/v1/developer"
        assert requests.post(api + "/datasets/", json={"name": "kept"}, headers=headers,
                             timeout=10).status_code == 201
    finally:
        assert stop_server(handle) == 0
    again = start_server(tmp_path / "data", tmp_path / "server.log")
    try:
        assert again.key == handle.key
        names = [d["name"] for d in requests.get(
            again.base_url + "/api/v1/developer/datasets/", headers={"X-API-Key": again.key},
            timeout=10).json()["data"]]
        assert names == ["kept"]
    finally:
        assert stop_server(again) == 0


def test_serve_refuses_a_port_in_use(server, tmp_path):
    port = server.base_url.rsplit(":", 1)[1]
    result = run("serve", "--data", str(tmp_path / "d"), "--port", port, timeout=30)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == \
        f"pictofs: port {port} on 127.0.0.1 is already in use"


def test_first_start_says_where_the_key_is(tmp_path):
    from harness import start_server, stop_server

    handle = start_server(tmp_path / "data", tmp_path / "server.log")
    stop_server(handle)
    log = Path(handle.log_path).read_text()
    assert str(tmp_path / "data" / "owner.key") in log
    assert handle.key not in log


IMPOSTOR = r"""
import http.server, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        with open(sys.argv[2], "a") as seen:
            seen.write(f"{self.path} key={self.headers.get('X-API-Key')}\n")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"status": "ok"}')
    do_POST = do_GET
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


def test_the_embedded_default_sends_no_key_to_a_server_that_cannot_prove_it_is_ours(tmp_path):
    """After a crash, another local user takes the recorded port and answers /healthz: the
    owner key must not reach it; a server of our own is started instead."""
    from harness import free_port

    env, data_dir = embedded_env(tmp_path)
    try:
        assert run("datasets", "create", "mine", env=env).returncode == 0
        ours = json.loads((data_dir / "server.json").read_text())
        assert (data_dir / "server.secret").stat().st_mode & 0o777 == 0o600
    finally:
        assert run("serve", "--stop", env=env).returncode == 0
    # the crash: server.json stays, and the port is someone else's now
    port = free_port()
    shared = Path(tempfile.mkdtemp(prefix="pictofs-impostor-"))  # readable by the other user
    shared.chmod(0o755)
    seen = shared / "saw.txt"
    seen.write_text("")
    seen.chmod(0o666)
    script = shared / "impostor.py"
    script.write_text(IMPOSTOR)
    script.chmod(0o644)
    # as another user where we can (root: runuser and the system's python, which that user
    # may execute), else as ourselves: what counts is that it cannot read server.secret
    other = os.geteuid() == 0 and os.access("/usr/bin/python3", os.X_OK)
    command = ["runuser", "-u", "nobody", "--", "/usr/bin/python3"] if other \
        else [sys.executable]
    # its own process group: runuser forks the python it runs, and killing runuser alone
    # would leave that python serving the port after the test
    impostor = subprocess.Popen([*command, str(script), str(port), str(seen)],
                                start_new_session=True)
    try:
        wait_until = time.monotonic() + 10
        while time.monotonic() < wait_until:
            try:
                requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.05)
        stale = dict(ours, pid=impostor.pid, base_url=f"http://127.0.0.1:{port}", port=port)
        (data_dir / "server.json").write_text(json.dumps(stale))
        listed = run("datasets", "list", env=env)
        assert listed.returncode == 0, listed.stderr
        assert "mine" in listed.stdout  # our own server again, with our data
        assert f"127.0.0.1:{port} answers but is not the local server" in listed.stderr
        assert f"using the local server at http://127.0.0.1:{port}" not in listed.stderr
        assert "key=None" in seen.read_text()  # it was asked, without a key
        assert "key=pk_" not in seen.read_text()
    finally:
        os.killpg(impostor.pid, signal.SIGKILL)
        impostor.wait()
        run("serve", "--stop", env=env)
        shutil.rmtree(shared)
