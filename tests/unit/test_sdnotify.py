"""``sd_notify`` over a unix datagram socket, by path and in the abstract namespace."""

from __future__ import annotations

import os
import socket

import pytest

from pictofs import sdnotify


@pytest.fixture()
def listener():
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.settimeout(5)
    yield sock
    sock.close()


def test_sends_to_a_socket_path(listener, tmp_path, monkeypatch):
    path = str(tmp_path / "notify")
    listener.bind(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert sdnotify.notify("READY=1", "STATUS=mounted")
    assert listener.recv(4096) == b"READY=1\nSTATUS=mounted"


def test_sends_to_an_abstract_socket(listener, monkeypatch):
    name = f"pictofs-test-{os.getpid()}"
    listener.bind("\0" + name)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    assert sdnotify.notify("STOPPING=1")
    assert listener.recv(4096) == b"STOPPING=1"


def test_does_nothing_outside_systemd(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False


def test_a_missing_socket_is_not_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert sdnotify.notify("READY=1") is False


@pytest.mark.parametrize("value, address", [
    ("/run/systemd/notify", "/run/systemd/notify"),
    ("@/org/freedesktop/systemd1/notify/1", "\0/org/freedesktop/systemd1/notify/1"),
    ("", None),
    ("@", None),
    ("vsock:2:1234", None),
    ("relative/path", None),
])
def test_socket_address(value, address):
    assert sdnotify.socket_address(value) == address
