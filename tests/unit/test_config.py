"""Connection precedence (protocol §1), key-file permissions, and the options table."""

import argparse
import os
from pathlib import Path

import pytest

from pictofs import config
from pictofs.config import (DEFAULT_BASE_URL, OPTIONS, add_options, finish_options,
                            read_key_file, resolve_connection)
from pictofs.errors import ConfigError


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("PICTOGRAPH_API_KEY", raising=False)
    monkeypatch.delenv("PICTOGRAPH_BASE_URL", raising=False)
    return tmp_path


def write_config(home: Path, text: str) -> None:
    folder = home / ".pictograph"
    folder.mkdir(mode=0o700)
    (folder / "config.toml").write_text(text)
    os.chmod(folder / "config.toml", 0o600)


def write_key(path: Path, key: str, mode: int = 0o600) -> Path:
    path.write_text(key + "\n")
    os.chmod(path, mode)
    return path


def test_nothing_configured(home):
    conn = resolve_connection()
    assert conn.api_key is None and conn.base_url == DEFAULT_BASE_URL
    assert conn.key_source == "none" and not conn.has_key


def test_config_file_is_read(home):
    write_config(home, '[default]\napi_key = "pk_live_file"\nbase_url = "http://h:1/"\n')
    conn = resolve_connection()
    assert (conn.api_key, conn.base_url) == ("pk_live_file", "http://h:1")


def test_environment_beats_config_file(home, monkeypatch):
    write_config(home, '[default]\napi_key = "pk_live_file"\nbase_url = "http://file"\n')
    monkeypatch.setenv("PICTOGRAPH_API_KEY", "pk_live_env")
    monkeypatch.setenv("PICTOGRAPH_BASE_URL", "http://env")
    conn = resolve_connection()
    assert (conn.api_key, conn.base_url, conn.key_source) == ("pk_live_env", "http://env",
                                                              "environment")


def test_key_file_beats_environment(home, monkeypatch):
    monkeypatch.setenv("PICTOGRAPH_API_KEY", "pk_live_env")
    key_file = write_key(home / "key", "pk_live_keyfile")
    assert resolve_connection(key_file=key_file).api_key == "pk_live_keyfile"


def test_argument_beats_everything(home, monkeypatch):
    monkeypatch.setenv("PICTOGRAPH_API_KEY", "pk_live_env")
    monkeypatch.setenv("PICTOGRAPH_BASE_URL", "http://env")
    conn = resolve_connection(base_url="http://arg", api_key="pk_live_arg",
                              key_file=write_key(home / "key", "pk_live_keyfile"))
    assert (conn.api_key, conn.base_url) == ("pk_live_arg", "http://arg")


def test_repr_hides_the_key(home):
    conn = resolve_connection(api_key="pk_live_secret123")
    assert "secret123" not in repr(conn) and "secret123" not in str(conn)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_key_file_readable_by_others_is_refused(home, mode):
    path = write_key(home / "key", "pk_live_x", mode)
    with pytest.raises(ConfigError, match="chmod 600"):
        read_key_file(path)


def test_key_file_missing_or_empty(home):
    with pytest.raises(ConfigError, match="cannot read key file"):
        read_key_file(home / "nope")
    with pytest.raises(ConfigError, match="empty"):
        read_key_file(write_key(home / "empty", ""))


def test_bad_toml_is_a_clear_error(home):
    write_config(home, "[default\napi_key=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        resolve_connection()


def test_options_table_has_unique_flags_per_command():
    for command in {c for o in OPTIONS for c in o.commands}:
        names = [o.name for o in config.options_for(command)]
        assert len(names) == len(set(names)), command


def test_finish_options_parses_defaults_env_and_arguments(monkeypatch):
    monkeypatch.setenv("PICTOGRAPH_BASE_URL", "http://from-env")
    parser = argparse.ArgumentParser()
    add_options(parser, "mount")
    args = finish_options(parser.parse_args(["--cache-size", "2G"]), "mount")
    assert args.cache_size == 2 << 30
    assert args.dir_cache_time == 30.0
    assert args.file_mode == 0o644
    assert args.base_url == "http://from-env"
    assert args.read_only is False


def test_finish_options_names_the_bad_option():
    parser = argparse.ArgumentParser()
    add_options(parser, "mount")
    with pytest.raises(ConfigError, match="--dir-cache-time"):
        finish_options(parser.parse_args(["--dir-cache-time", "soon"]), "mount")
