"""Security of the command line, the Python client, the reference server and the mirror.

- The API key is never printed or logged at ``-v`` (``datasets list|create``, a rejected key,
  ``serve``, ``mirror --once``), never in a process's command line, and a config file holding
  a key is refused when others can read it.
- The server binds loopback by default and keeps its data folder 0700 with 0600 files.
- Names with ``..``, ``.``, ``/``, NUL, C0/C1 control characters, unpaired surrogates or over
  255 bytes are refused by the client before any request and by the server on every route
  that takes a name; ``..`` in a URL names nothing.
- Decompression bombs (PNG, BMP, GIF headers; over the pixel limit and over twice it) are
  refused by the server (415), which the client reports as a ValidationError.
- The mirror reports files with bad names and bombs, uploads none of them, and writes no raw
  control character into its report or log.

Mount-side checks (the daemon, its files, ``--allow-other``) are in tests/fuse/test_security.py.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import uuid
import warnings
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
from PIL import Image

from harness import start_server, stop_server
from imagegen import png_bytes
from pictofs.api import ValidationError
from securitykit import (assert_no_key, bmp_bomb, gif_bomb, listeners, mode, outward_address,
                         png_bomb, process_args)

API = "/api/v1/developer"


def run(*args: str, env: dict[str, str], timeout: float = 120
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pictofs", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)


def account_env(server, key: str | None = None) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return dict(os.environ, PICTOGRAPH_API_KEY=key or server.key,
                PICTOGRAPH_BASE_URL=server.base_url)


# ---------------------------------------------------------------------- the key

def test_verbose_cli_commands_never_show_the_key(server):
    env = account_env(server)
    name = f"sec-cli-{uuid.uuid4().hex[:6]}"
    created = run("datasets", "create", name, "-v", env=env)
    assert created.returncode == 0, created.stderr
    listing = run("datasets", "list", "-v", env=env)
    assert listing.returncode == 0 and name in listing.stdout
    assert "DEBUG" in listing.stderr  # -v did turn the logs on
    for result in (created, listing):
        assert_no_key(result.stdout + result.stderr, server.key, "output of a -v command")
    wrong = "pk_live_" + uuid.uuid4().hex + uuid.uuid4().hex
    rejected = run("datasets", "list", "-v", env=account_env(server, wrong))
    assert rejected.returncode == 1
    assert_no_key(rejected.stdout + rejected.stderr, wrong, "output of a rejected -v command")


def test_config_file_readable_by_others_is_refused(server, tmp_path):
    home = tmp_path / "home"
    folder = home / ".pictograph"
    folder.mkdir(parents=True, mode=0o700)
    config = folder / "config.toml"
    config.write_text(f'[default]\napi_key = "{server.key}"\nbase_url = "{server.base_url}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("PICTOGRAPH_")}
    env["HOME"] = str(home)
    for loose in (0o644, 0o640, 0o604):
        config.chmod(loose)
        refused = run("datasets", "list", env=env)
        assert refused.returncode == 1, refused
        assert refused.stderr.strip().splitlines() == [
            f"pictofs: config file {config} is readable by others (mode {loose:04o}); "
            f"run: chmod 600 {config}"]
        assert_no_key(refused.stdout + refused.stderr, server.key)
    config.chmod(0o600)
    assert run("datasets", "list", env=env).returncode == 0
    # A config file without a key may be readable by anyone (it only names the service).
    config.write_text(f'[default]\nbase_url = "{server.base_url}"\n')
    config.chmod(0o644)
    env["PICTOGRAPH_API_KEY"] = server.key
    assert run("datasets", "list", env=env).returncode == 0


def test_serve_keeps_keys_out_of_logs_and_argv_binds_loopback_and_keeps_files_private(
        tmp_path):
    data = tmp_path / "data"
    server = start_server(data, tmp_path / "serve.log", "-v")
    wrong = "pk_live_" + uuid.uuid4().hex + uuid.uuid4().hex
    try:
        key = server.key
        session = requests.Session()
        api = server.base_url + API
        name = f"sec-{uuid.uuid4().hex[:6]}"
        assert session.post(api + "/datasets/", json={"name": name}, timeout=10,
                            headers={"X-API-Key": key, "Idempotency-Key": uuid.uuid4().hex}
                            ).status_code == 201
        assert session.get(api + "/me", headers={"X-API-Key": wrong}, timeout=10
                           ).status_code == 401
        assert session.post(api + "/datasets/", json={"name": "x"}, timeout=10,
                            headers={"X-API-Key": wrong, "Idempotency-Key": "k" * 32}
                            ).status_code == 401
        assert session.get(api + "/images/", params={"dataset": name, "limit": 0},
                           headers={"X-API-Key": key}, timeout=10).status_code == 422
        cmdline, ps_line = process_args(server.process.pid)
        for text in (cmdline, ps_line):
            assert_no_key(text, key, "server's command line")

        # Loopback only, unless asked: server.json, the kernel's socket table, a connection.
        info = json.loads((data / "server.json").read_text())
        assert info["host"] == "127.0.0.1"
        assert listeners(info["port"]) == ["127.0.0.1"]
        outward = outward_address()
        if outward is not None:
            with pytest.raises(requests.ConnectionError):
                requests.get(f"http://{outward}:{info['port']}/healthz", timeout=5)

        # The data folder and every file in it that holds a key, a secret or the database.
        assert mode(data) == 0o700
        for name_ in ("owner.key", "server.json", "upload.secret", "pictofs.db",
                      "pictofs.db-wal", "pictofs.db-shm", "server.lock"):
            assert mode(data / name_) == 0o600, name_
        assert (data / "owner.key").read_text() == key + "\n"
    finally:
        assert stop_server(server) == 0
    log = server.log_path.read_text()
    assert "DEBUG" in log  # -v reached the server's logging
    assert_no_key(log, server.key, "server log")
    assert_no_key(log, wrong, "server log")


def test_log_files_are_created_private(tmp_path):
    """A mount's (or mirror's) ``--log-file`` names datasets and files: it was created 0644.
    Created 0600 whatever the umask, and again when logrotate has moved it away."""
    log = tmp_path / "logs" / "pictofs.log"
    log.parent.mkdir()
    script = (
        "import logging, os\n"
        "os.umask(0o022)\n"
        "from pictofs.logsetup import setup_logging\n"
        f"setup_logging(log_file={str(log)!r})\n"
        "logging.getLogger('pictofs').warning('wrote cats/a.jpg')\n"
        f"os.rename({str(log)!r}, {str(log) + '.1'!r})\n"
        "logging.getLogger('pictofs').warning('wrote cats/b.jpg')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "cats/a.jpg" in Path(str(log) + ".1").read_text()
    assert "cats/b.jpg" in log.read_text()
    assert mode(Path(str(log) + ".1")) == 0o600
    assert mode(log) == 0o600


# ---------------------------------------------------------------------- names

BAD_SEGMENTS = {
    "dotdot": "..", "dot": ".", "nul": "a\x00b", "bell": "a\x07b", "newline": "a\nb",
    "del": "a\x7fb", "c1": "a\x85b", "too-long": "é" * 128,  # 256 bytes
}


@pytest.mark.parametrize("case", sorted(BAD_SEGMENTS))
def test_client_refuses_bad_folder_names_before_any_request(case, client, dataset, server,
                                                            tmp_path):
    local = tmp_path / "x.png"
    local.write_bytes(png_bytes(1))
    before = server.calls("POST", "upload-url")
    with pytest.raises(ValidationError):
        client.images.upload(dataset.id, local, folder_path=f"/ok/{BAD_SEGMENTS[case]}")
    assert server.calls("POST", "upload-url") == before


@pytest.mark.parametrize("name", ["bell\x07.png", "c1\x85.png", "nl\n.png",
                                  os.fsdecode(b"bad\xff.png")])
def test_client_refuses_bad_file_names_before_any_request(name, client, dataset, server,
                                                          tmp_path):
    local = tmp_path / name
    local.write_bytes(png_bytes(2))
    before = server.calls("POST", "upload-url")
    with pytest.raises(ValidationError):
        client.images.upload(dataset.id, local)
    assert server.calls("POST", "upload-url") == before


def _error(response: requests.Response, *statuses: int) -> None:
    assert response.status_code in statuses, (response.status_code, response.text)
    assert set(response.json()) == {"error"}


def test_server_refuses_bad_names_on_every_route_that_takes_one(server, dataset, client,
                                                                 tmp_path):
    """Complements tests/server/test_server_security.py (upload-url, register, bulk-register,
    folders, rename) with dataset names, bulk-upload-url, batch move targets, C1 controls
    and unpaired surrogates."""
    s = requests.Session()
    s.headers["X-API-Key"] = server.key
    api = server.base_url + API
    local = tmp_path / "m.png"
    local.write_bytes(png_bytes(3))
    image = client.images.upload(dataset.id, local)
    for label, bad in [*BAD_SEGMENTS.items(), ("slash", "a/b")]:
        filename = bad if label in ("dot", "dotdot") else f"{bad}.png"  # "...png" is fine
        _error(s.post(api + "/datasets/", json={"name": bad}, timeout=10), 400)
        _error(s.post(api + "/images/bulk-upload-url", timeout=10, json={
            "dataset": dataset.id, "images": [{"filename": filename, "directory_path": "/",
                                               "content_type": "image/png"}]}), 400)
        if label == "slash":  # "/" in a folder path separates segments
            continue
        _error(s.post(api + "/batch/images/move", timeout=10, json={
            "dataset_name": dataset.id, "image_ids": [image.id],
            "target_directory_path": f"/ok/{bad}"}), 400)
        _error(s.post(api + "/images/upload-url", timeout=10, json={
            "dataset": dataset.id, "filename": filename, "content_type": "image/png"}), 400)
    # Unpaired surrogates cannot even be stored: 422 on every body.
    for body in ({"name": "\ud800"},):
        _error(s.post(api + "/datasets/", json=body, timeout=10), 422)
    _error(s.post(api + "/images/upload-url", timeout=10, json={
        "dataset": dataset.id, "filename": "s\udfff.png", "content_type": "image/png"}), 422)
    _error(s.post(api + "/directories/", timeout=10, json={
        "dataset": dataset.id, "directory_path": "/\ud83d"}), 422)
    # Nothing moved, nothing was created.
    assert client.images.get(image.id).path == image.path
    names = [d["name"] for d in s.get(api + "/datasets/", params={"limit": 1000},
                                      timeout=10).json()["data"]]
    assert not [n for n in names if n in BAD_SEGMENTS.values()]


def test_dot_dot_in_a_url_names_nothing(server, client, tmp_path):
    """A raw ``..`` (never normalized by the server) or an encoded one cannot reach another
    dataset's image; an encoded ``/`` is refused outright."""
    first = client.projects.create(f"sec-a-{uuid.uuid4().hex[:6]}")
    second = client.projects.create(f"sec-b-{uuid.uuid4().hex[:6]}")
    local = tmp_path / "t.png"
    local.write_bytes(png_bytes(4))
    client.images.upload(second.id, local)
    connection = http.client.HTTPConnection(server.base_url.split("//", 1)[1], timeout=10)
    for path in (f"/images/{first.name}/../{second.name}/t.png",
                 f"/images/{first.name}/%2e%2e/{second.name}/t.png",
                 f"/images/{first.name}/x/../../{second.name}/t.png/metadata",
                 f"/images/{quote(first.name)}%2F..%2F{second.name}/t.png",
                 f"/annotations/{first.name}/../{second.name}/t.png"):
        connection.request("GET", API + path, headers={"X-API-Key": server.key})
        response = connection.getresponse()
        body = response.read()
        assert response.status == 404, (path, response.status, body[:200])
        assert b"t.png" not in body or b"error" in body
    connection.close()


# ---------------------------------------------------------------------- decompression bombs

@pytest.mark.parametrize("maker,ext,ctype", [(png_bomb, "png", "image/png"),
                                             (bmp_bomb, "bmp", "image/bmp"),
                                             (gif_bomb, "gif", "image/gif")])
@pytest.mark.parametrize("side", [10_000, 20_000])  # over the limit; over twice the limit
def test_bombs_are_refused_by_server_and_client(maker, ext, ctype, side, server, client,
                                                dataset, tmp_path):
    data = maker(side, side)
    assert len(data) < 200_000  # tiny on the wire
    s = requests.Session()
    s.headers["X-API-Key"] = server.key
    api = server.base_url + API
    name = f"bomb{side}.{ext}"
    url = s.post(api + "/images/upload-url", timeout=10, json={
        "dataset": dataset.id, "filename": name, "content_type": ctype}).json()["data"]
    assert requests.put(url["upload_url"], data=data, headers={"Content-Type": ctype},
                        timeout=30).status_code == 200
    refused = s.post(api + "/images/register", timeout=60, json={
        "dataset": dataset.id, "filename": name, "file_size": len(data), "content_type": ctype})
    _error(refused, 415)
    assert refused.json()["error"]["code"] == "decompression_bomb"
    assert not list(client.images.list(dataset.id))
    # The client checks names and sizes locally and leaves content to the service: its 415
    # arrives as a ValidationError, and nothing is registered.
    local = tmp_path / name
    local.write_bytes(data)
    with pytest.raises(ValidationError) as caught, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the client's probe
        client.images.upload(dataset.id, local)
    assert caught.value.status == 415
    assert not list(client.images.list(dataset.id))


# ---------------------------------------------------------------------- the mirror

def test_mirror_reports_bad_names_and_bombs_uploads_none_and_logs_no_key(server, client,
                                                                        dataset, tmp_path):
    local = tmp_path / "local"
    local.mkdir()
    (local / "good.png").write_bytes(png_bytes(10))
    bad = {"bell\x07.png": "bell\\x07.png", "nl\n.png": "nl\\n.png", "c1\x85.png": "c1\\x85.png",
           os.fsdecode(b"bad\xff.png"): "bad\\xff.png", "tab\t.png": "tab\\t.png"}
    for index, name in enumerate(bad):
        (local / name).write_bytes(png_bytes(11 + index))
    (local / "dir\x01").mkdir()
    (local / "dir\x01" / "in.png").write_bytes(png_bytes(20))
    (local / "bomb.png").write_bytes(png_bomb(20_000, 20_000))
    (local / "bomb-warn.png").write_bytes(png_bomb(10_000, 10_000))
    log_file = tmp_path / "mirror.log"

    result = run("mirror", str(local), dataset.name, "--once", "-v", "--log-file",
                 str(log_file), env=account_env(server))

    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    for shown in [*bad.values(), "dir\\x01/in.png"]:
        assert any(line.startswith(f"failed {shown}: ") for line in lines), (shown, lines)
    assert any(line.startswith("failed bomb.png: ") for line in lines), lines
    assert any(line.startswith("failed bomb-warn.png: ") and "decompression bomb" in line
               for line in lines), lines
    assert [i.path for i in client.images.list(dataset.id)] == ["/good.png"]
    log = log_file.read_text()
    for text, where in ((result.stdout, "report"), (log, "log")):
        assert not any(ch in text for ch in "\x07\x01\x85\t"), f"raw control character in {where}"
        assert_no_key(text, server.key, f"mirror {where}")
    assert_no_key(result.stderr, server.key, "mirror stderr")
    assert "DEBUG" in log
    # One report line per bad file: a newline in a name did not split its line.
    assert len([ln for ln in lines if ln.startswith("failed ")]) == len(bad) + 3
    state = Path(os.environ["XDG_STATE_HOME"]) / "pictofs"
    assert mode(state) == 0o700
    for path in (state / "mirror").rglob("*"):
        assert mode(path) == (0o700 if path.is_dir() else 0o600), path
