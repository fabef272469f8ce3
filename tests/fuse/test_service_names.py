"""Names from the service that a mount cannot take as they are, through a real mount
(filesystem "What you see", "Names the mount cannot show"): an image whose name is not one
path segment made the kernel fail the whole ``ls`` with EIO, with no log line; it is skipped
(one log line, ``skipped_names`` in ``pictofs status``) and the rest listed.

The reference server refuses such names, so they are written into its database
(``servicedb``).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from seed import seed_images
from servicedb import rename_images

pytestmark = pytest.mark.fuse

BAD_NAMES = ["../../x.png", "sub/x.png", "/abs.png", ""]


def test_ls_of_a_folder_holding_names_that_are_not_one_segment_lists_the_rest(
        server, client, dataset, mount):  # type: ignore[no-untyped-def]
    made = seed_images(client, dataset.id, "/",
                       ["good.png", *[f"b{i}.png" for i in range(len(BAD_NAMES))]])
    rename_images(server, {made[f"b{i}.png"][0].id: name for i, name in enumerate(BAD_NAMES)})
    m = mount(dataset.name, "--read-only")
    assert os.listdir(m.path) == ["good.png"]
    assert (m.path / "good.png").read_bytes() == made["good.png"][1]
    m.refresh()
    ls = subprocess.run(["ls", "-la", str(m.path)], capture_output=True, text=True, timeout=60)
    assert ls.returncode == 0, ls.stderr
    assert m.status()["skipped_names"] == len(BAD_NAMES)
    text = subprocess.run([sys.executable, "-m", "pictofs", "status", str(m.path)],
                          capture_output=True, text=True, env=m.env, timeout=60)
    assert f"skipped:    {len(BAD_NAMES)} names" in text.stdout, text.stdout
    lines = [line for line in m.log().splitlines() if "skipped in" in line]
    assert len(lines) == len(BAD_NAMES), lines  # once per name, not once per listing
