"""The words of the command line's errors and its forgiving parsing, as pure functions:
fusermount3's refusal turned into one line with the fix, ``-o`` anywhere on a ``mount``
line, a mirror target with a bare colon, and what a folder is when no mount answers.
(The same lines from real mounts and real users: tests/fuse/test_error_lines.py and
tests/fuse/test_unprivileged.py.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pictofs.cli import UsageError, mount_options_anywhere
from pictofs.errors import ConfigError
from pictofs.fs.fuse_session import explain_refusal, mount_entry, whose_mount
from pictofs.mirroring import parse_target


def test_a_refusal_is_fusermount3s_last_line_with_the_fix() -> None:
    said = "fusermount3: user has no write access to mountpoint /srv/x\n"
    line = explain_refusal("/srv/x", 4, said)
    assert line.startswith("mounting /srv/x failed: fusermount3: user has no write access")
    assert "folder you own" in line and "\n" not in line
    said = ("fusermount3: option allow_other only allowed if 'user_allow_other' is set in "
            "/etc/fuse.conf\n")
    line = explain_refusal("/m", 4, said)
    assert "add the line user_allow_other to /etc/fuse.conf" in line
    # a message without a known fix is passed on as said; nothing said names the code
    assert explain_refusal("/m", 4, "fuse: bad mount point `/m': Permission denied") == \
        "mounting /m failed: fuse: bad mount point `/m': Permission denied"
    assert explain_refusal("/m", 4, "") == \
        "mounting /m failed (libfuse error 4, with no message)"


def test_mount_takes_dash_o_anywhere_as_mount8_does() -> None:
    before = mount_options_anywhere(["mount", "-o", "ro", "ds", "/m"])
    after = mount_options_anywhere(["mount", "ds", "/m", "-o", "ro"])
    between = mount_options_anywhere(["mount", "ds", "-oro,cache_size=5G", "/m"])
    assert before == after == ["mount", "ds", "/m", "--read-only"]
    assert between == ["mount", "ds", "/m", "--read-only", "--cache-size", "5G"]
    assert mount_options_anywhere(["mount", "ds", "/m", "--options=allow_other"]) == \
        ["mount", "ds", "/m", "--allow-other"]
    assert mount_options_anywhere(["status", "-o"]) == ["status", "-o"]  # mount only
    with pytest.raises(UsageError):
        mount_options_anywhere(["mount", "ds", "/m", "-o"])
    with pytest.raises(ConfigError, match="unknown mount option 'bogus'"):
        mount_options_anywhere(["mount", "-o", "bogus", "ds", "/m"])


def test_a_mirror_target_with_a_bare_colon_is_a_folder() -> None:
    assert parse_target("ds:cams") == ("ds", "/cams")
    assert parse_target("ds:/cams") == ("ds", "/cams")
    assert parse_target("ds:cams/front") == ("ds", "/cams/front")
    assert parse_target("ds:") == ("ds", "/")
    assert parse_target("ds") == ("ds", "/")
    assert parse_target("a:b:/x") == ("a:b", "/x")  # the first ":/" splits
    with pytest.raises(ConfigError):
        parse_target(":cams")


def test_what_a_folder_is_when_no_mount_answers(tmp_path: Path) -> None:
    assert whose_mount(str(tmp_path)) == f"{tmp_path} is not a mountpoint"
    proc = mount_entry("/proc")
    assert proc is not None and proc.fstype == "proc" and not proc.is_pictofs
    assert whose_mount("/proc") == "/proc is not a pictofs mount (it is a proc mount)"
    assert mount_entry(str(tmp_path)) is None
    assert os.path.ismount("/proc")
