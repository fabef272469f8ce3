"""Harness of the reference-server tests: a real server in a subprocess, spoken to with requests.

- ``launch``/``shut_down``: ``pictofs.server.run.serve`` in a subprocess on port 0 (optionally
  with a storage port) over a data folder; waits for ``server.json`` and ``/healthz``.
- ``ref_server`` (one per test module): a running server, its owner key and data folder. Its
  log must hold no traceback and no API key when the module ends.
- ``api``: a small requests helper bound to the owner key (``make_api`` for other keys), with
  the three-step upload and dataset creation.
- ``make_png``: a tiny PNG whose bytes differ by ``seed`` (a PNG text chunk).
"""

from __future__ import annotations

import io
import json
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import requests
from PIL import Image, PngImagePlugin

import harness

API = "/api/v1/developer"



@dataclass
class RefServer:
    base_url: str
    key: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    storage_port: int | None

    @property
    def api_url(self) -> str:
        return self.base_url + API

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def blob_files(self) -> set[Path]:
        """Every file under the blob folder (temporary files included)."""
        return {p for p in (self.data_dir / "blobs").rglob("*") if p.is_file()}


def launch(data_dir: Path, log_path: Path, storage_port: int | None = None,
           timeout: float = 30) -> RefServer:
    """``pictofs serve`` on port 0 (and ``storage_port``), through the shared harness."""
    extra = ["--storage-port", str(storage_port)] if storage_port is not None else []
    handle = harness.start_server(data_dir, log_path, *extra, timeout=timeout)
    info = json.loads((data_dir / "server.json").read_text())
    return RefServer(handle.base_url, handle.key, data_dir, handle.process, log_path,
                     info["storage_port"])


def shut_down(server: RefServer, timeout: float = 15) -> int:
    """SIGTERM and wait (SIGKILL after ``timeout``); returns the exit code."""
    return harness.stop_server(server, timeout)  # type: ignore[arg-type]


def png_bytes(seed: int | str = 0, size: tuple[int, int] = (1, 1),
              color: tuple[int, int, int] = (10, 20, 30)) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("seed", str(seed))
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG", pnginfo=info)
    return out.getvalue()


class Api:
    """requests bound to one server and one key, plus the three-step upload."""

    def __init__(self, server: RefServer, key: str | None) -> None:
        self.server = server
        self.key = key
        self.session = requests.Session()
        if key is not None:
            self.session.headers["X-API-Key"] = key

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 60)
        return self.session.request(method, self.server.api_url + path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, **kwargs)

    def create_dataset(self, prefix: str = "ds") -> dict[str, Any]:
        response = self.post("/datasets/", json={"name": f"{prefix}-{uuid.uuid4().hex[:8]}"})
        assert response.status_code == 201, response.text
        return response.json()["data"]

    def upload_url(self, dataset: str, filename: str, directory: str = "/",
                   content_type: str = "image/png") -> requests.Response:
        return self.post("/images/upload-url", json={
            "dataset": dataset, "filename": filename, "directory_path": directory,
            "content_type": content_type})

    def put(self, url: str, data: bytes, content_type: str = "image/png") -> requests.Response:
        return requests.put(url, data=data, headers={"Content-Type": content_type}, timeout=60)

    def register(self, dataset: str, filename: str, directory: str = "/",
                 file_size: int | None = None, content_type: str = "image/png",
                 **extra: Any) -> requests.Response:
        body = {"dataset": dataset, "filename": filename, "directory_path": directory,
                "file_size": file_size, "content_type": content_type, **extra}
        return self.post("/images/register", json=body)

    def upload(self, dataset: str, filename: str, data: bytes, directory: str = "/",
               content_type: str = "image/png") -> dict[str, Any]:
        """All three steps; returns the registered Image."""
        step1 = self.upload_url(dataset, filename, directory, content_type)
        assert step1.status_code == 200, step1.text
        step2 = self.put(step1.json()["data"]["upload_url"], data, content_type)
        assert step2.status_code in (200, 201), step2.text
        step3 = self.register(dataset, filename, directory, len(data), content_type)
        assert step3.status_code == 201, step3.text
        return step3.json()["data"]


def assert_error(response: requests.Response, status: int, code: str | None = None) -> dict:
    """The response has ``status`` and the protocol's error body; returns ``error``."""
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"code", "message", "details"}, error
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code, error
    assert response.headers.get("X-Request-Id")
    return error


@pytest.fixture(scope="module")
def ref_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RefServer]:
    root = tmp_path_factory.mktemp("refserver")
    server = launch(root / "data", root / "server.log")
    yield server
    code = shut_down(server)
    log = server.log_text()
    assert code == 0, log
    assert "Traceback" not in log, log
    assert server.key not in log
    assert not (server.data_dir / "server.json").exists()


@pytest.fixture()
def api(ref_server: RefServer) -> Api:
    return Api(ref_server, ref_server.key)


@pytest.fixture()
def make_api(ref_server: RefServer) -> Callable[[str | None], Api]:
    return lambda key: Api(ref_server, key)


@pytest.fixture()
def dataset(api: Api) -> dict[str, Any]:
    """A fresh dataset of the owner's organization."""
    return api.create_dataset()


@pytest.fixture()
def make_png() -> Callable[..., bytes]:
    return png_bytes


@pytest.fixture()
def check_error() -> Callable[..., dict]:
    return assert_error


@pytest.fixture()
def api_for() -> Callable[..., Api]:
    """``api_for(server, key=None)``: an Api on any server (default: its owner key)."""
    return lambda server, key=None: Api(server, key or server.key)


@pytest.fixture()
def spawn_server(tmp_path: Path) -> Iterator[Callable[..., RefServer]]:
    """Start extra servers (``spawn_server(data_dir, storage_port=None)``); all are stopped
    at teardown."""
    started: list[RefServer] = []

    def spawn(data_dir: Path | None = None, storage_port: int | None = None) -> RefServer:
        server = launch(data_dir or tmp_path / "data", tmp_path / "server.log", storage_port)
        started.append(server)
        return server

    yield spawn
    for server in started:
        shut_down(server)


@pytest.fixture()
def stop_server() -> Callable[[RefServer], int]:
    """``stop_server(server)``: SIGTERM, wait, return the exit code."""
    return shut_down
