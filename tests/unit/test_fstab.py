"""The mount(8) helper's translation of ``SOURCE MOUNTPOINT [-sfnv] -o OPTIONS`` (pure)."""

from __future__ import annotations

import os
import pwd

import pytest

from pictofs.cli import _is_mount_helper_form
from pictofs.errors import ConfigError
from pictofs.fstab import (
    EXIT_MOUNT_FAILED,
    EXIT_USAGE,
    IGNORED_OPTIONS,
    mount_arguments,
    prepare_environment,
    run,
    split_options,
)

MP = "/mnt/p"

TRANSLATIONS = [
    # (helper arguments, pictofs arguments)
    (["my-dataset", MP, "-o", "ro,allow_other,cache_size=20G"],
     ["mount", "my-dataset", MP, "--read-only", "--allow-other", "--cache-size", "20G"]),
    (["my-dataset", MP], ["mount", "my-dataset", MP]),
    (["/", MP, "-o", "rw"], ["mount", MP]),  # the organization
    (["ds", MP, "-o", "key_file=/etc/pictofs/key,base_url=http://127.0.0.1:8790"],
     ["mount", "ds", MP, "--key-file", "/etc/pictofs/key", "--base-url",
      "http://127.0.0.1:8790"]),
    (["ds", MP, "-o", "uid=1000,gid=1000,file_mode=0640"],
     ["mount", "ds", MP, "--uid", "1000", "--gid", "1000", "--file-mode", "0640"]),
    (["ds", MP, "-o", "dir_cache_time=5m,write_back=500ms,permanent_delete"],
     ["mount", "ds", MP, "--dir-cache-time", "5m", "--write-back", "500ms",
      "--permanent-delete"]),
    # what an fstab line with systemd options and mount.fuse3's additions look like
    (["ds", MP, "-o", "rw,noatime,nosuid,nodev,_netdev,nofail,x-systemd.automount,"
      "x-systemd.idle-timeout=60,dev,suid,defaults,user,ro"],
     ["mount", "ds", MP, "--read-only"]),
    # mount(8)'s switches: -n ignored, -v verbose, -t ignored, options glued to -o
    (["ds", MP, "-n", "-v", "-t", "fuse.pictofs", "-oro"],
     ["mount", "ds", MP, "--read-only", "--verbose"]),
    (["ds", MP, "-o", "ro", "-o", "transfers=4"],
     ["mount", "ds", MP, "--read-only", "--transfers", "4"]),
    # a quoted value holding a comma
    (["ds", MP, "-o", 'log_file="/var/log/a,b.log",ro'],
     ["mount", "ds", MP, "--log-file", "/var/log/a,b.log", "--read-only"]),
    # dashes are accepted as well as underscores
    (["ds", MP, "-o", "cache-size=1G"], ["mount", "ds", MP, "--cache-size", "1G"]),
]


@pytest.mark.parametrize("argv, expected", TRANSLATIONS)
def test_translation(argv, expected):
    call = mount_arguments(argv)
    assert call.argv == expected
    assert not call.fake


REFUSALS = [
    # (helper arguments, words the message must contain)
    (["ds", MP, "-o", "api_key=pk_test_abc"], ["api_key=", "readable", "key_file="]),
    (["ds", MP, "-o", "foreground"], ["foreground"]),
    (["ds", MP, "-o", "bogus=1"], ["unknown mount option 'bogus'", "cache_size"]),
    (["ds", MP, "-o", "allow_other=1"], ["takes no value"]),
    (["ds", MP, "-o", "cache_size"], ["needs a value"]),
    (["ds", MP, "-o", "cache_size=lots"], ["cache_size=lots", "not a size"]),
    (["ds", MP, "-o", "uid=no-such-user-here"], ["no such user"]),
    (["ds", MP, "-o", 'log_file="/x'], ["unbalanced"]),
    (["ds"], ["SOURCE and MOUNTPOINT"]),
    (["ds", MP, "extra"], ["SOURCE and MOUNTPOINT"]),
    (["ds", MP, "-N", "/proc/1/ns/mnt"], ["namespace"]),
    (["ds", MP, "-x"], ["unknown switch -x"]),
    (["/home/me/ds", MP], ["is a path", "--no-canonicalize"]),
]


@pytest.mark.parametrize("argv, words", REFUSALS)
def test_refusal(argv, words):
    with pytest.raises(ConfigError) as caught:
        mount_arguments(argv)
    for word in words:
        assert word in str(caught.value)


def test_the_api_key_never_appears_in_the_refusal():
    with pytest.raises(ConfigError) as caught:
        mount_arguments(["ds", MP, "-o", "api_key=pk_live_SECRET123"])
    assert "SECRET123" not in str(caught.value)


def test_sloppy_turns_unknown_options_into_warnings():
    call = mount_arguments(["ds", MP, "-s", "-o", "bogus,ro"])
    assert call.argv == ["mount", "ds", MP, "--read-only"]
    assert len(call.warnings) == 1 and "bogus" in call.warnings[0]


def _must_not_mount(argv: list[str]) -> int:
    raise AssertionError(f"mounted: {argv}")


def test_fake_mounts_nothing_and_exits_zero(capsys):
    assert run(["ds", MP, "-f", "-o", "ro"], prog="mount.fuse.pictofs",
               pictofs_main=_must_not_mount) == 0
    assert "pictofs mount ds /mnt/p --read-only" in capsys.readouterr().err


def test_refused_option_exits_1_with_one_clear_line(capsys):
    assert run(["ds", MP, "-o", "api_key=pk_test_x"], prog="mount.fuse.pictofs",
               pictofs_main=_must_not_mount) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("mount.fuse.pictofs: api_key= is refused") and "usage" not in err


@pytest.mark.parametrize("code, expected", [(0, 0), (2, EXIT_USAGE), (1, EXIT_MOUNT_FAILED)])
def test_run_mounts_through_the_entry_point_it_is_given(code, expected):
    calls: list[list[str]] = []

    def pictofs_main(argv: list[str]) -> int:
        calls.append(argv)
        return code

    assert run(["ds", MP, "-o", "ro"], prog="mount.fuse.pictofs",
               pictofs_main=pictofs_main) == expected
    assert calls == [["mount", "ds", MP, "--read-only"]]


def test_user_and_group_names_become_numbers():
    me = pwd.getpwuid(os.getuid())
    call = mount_arguments(["ds", MP, "-o", f"uid={me.pw_name}"])
    assert call.argv[-2:] == ["--uid", str(me.pw_uid)]


def test_every_ignored_option_is_ignored():
    call = mount_arguments(["ds", MP, "-o", ",".join(sorted(IGNORED_OPTIONS))])
    assert call.argv == ["mount", "ds", MP]


@pytest.mark.parametrize("text, items", [
    ("a,b=c", ["a", "b=c"]),
    ('a="x,y",b', ["a=x,y", "b"]),
    (",,a,", ["a"]),
    ("", []),
])
def test_split_options(text, items):
    assert split_options(text) == items


def test_environment_gets_home_from_the_password_database_and_a_path():
    env: dict[str, str] = {"PICTOGRAPH_API_KEY": "k"}
    prepare_environment(env)
    assert env["HOME"] == pwd.getpwuid(os.getuid()).pw_dir
    assert "/usr/bin" in env["PATH"].split(":")
    kept = {"HOME": "/somewhere", "PATH": "/opt/bin"}
    prepare_environment(kept)
    assert kept == {"HOME": "/somewhere", "PATH": "/opt/bin"}


@pytest.mark.parametrize("argv, is_helper", [
    (["my-dataset", MP, "-o", "ro"], True),
    (["/", MP, "-oro"], True),
    (["mount", "my-dataset", MP], False),
    (["mount", "my-dataset", MP, "-o", "ro"], False),  # a subcommand keeps its meaning
    (["my-dataset", MP], False),  # no -o: argparse reports the unknown command
    (["--version"], False),
    ([], False),
])
def test_cli_routes_the_subcommand_less_form(argv, is_helper):
    assert _is_mount_helper_form(argv) is is_helper
