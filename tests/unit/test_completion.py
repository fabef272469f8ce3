"""The shipped bash completion, run by bash: what it offers after a few typed words."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "packaging" / "completion" / "pictofs.bash"


def complete(line: str, cwd: Path) -> list[str]:
    """COMPREPLY for the command line ``line`` (the cursor at its end)."""
    words = line.split(" ")
    program = (f"source {shlex.quote(str(SCRIPT))}\n"
               f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)})\n"
               f"COMP_CWORD={len(words) - 1}\n"
               "_pictofs\n"
               'printf "%s\\n" "${COMPREPLY[@]}"\n')
    result = subprocess.run(["bash", "--norc", "--noprofile", "-c", program], cwd=cwd,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return [word for word in result.stdout.splitlines() if word]


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    (tmp_path / "mnt").mkdir()
    (tmp_path / "media").mkdir()
    (tmp_path / "key.txt").write_text("k")
    return tmp_path


@pytest.mark.parametrize("line, expected", [
    ("pictofs mo", ["mount"]),
    ("pictofs s", ["serve", "status", "sync"]),
    ("pictofs --v", ["--version"]),
    ("pictofs datasets c", ["create"]),
    ("pictofs mount --cache-s", ["--cache-size"]),
    ("pictofs status --j", ["--json"]),
    ("pictofs mirror --on", ["--once"]),
    ("pictofs datasets create --ex", ["--exist-ok"]),
    ("pictofs umount m", ["media", "mnt"]),  # a mountpoint: directories only
    ("pictofs mount my-dataset m", ["media", "mnt"]),
    ("pictofs mount --key-file k", ["key.txt"]),  # a FILE value: files
    ("pictofs mount --cache-dir m", ["media", "mnt"]),  # a DIR value: directories
    ("pictofs mount --cache-size ", []),  # a size: nothing to offer
    ("pictofs mirror media ", []),  # the dataset after LOCAL_DIR: not completed
    ("pictofs mirror --settle 2s m", ["media", "mnt"]),  # a flag's value is skipped
])
def test_completion(line, expected, tree):
    assert sorted(complete(line, tree)) == expected
