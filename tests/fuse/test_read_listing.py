"""Listings through READDIRPLUS, and the calls the kernel skips on reads, on a real mount
(filesystem §2–§4).

The daemon counts its FUSE callbacks (``callbacks`` in ``pictofs status --json``); libfuse's
high-level API turns every kernel lookup into a ``getattr`` callback, so "no ``getattr`` per
entry" means the kernel took each entry's attributes from the listing itself.
"""

from __future__ import annotations

import os
import random
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from imagegen import png_bytes
from mountkit import wait_for
from pictofs.fs.fuse_session import abort_connection
from seed import seed_images

pytestmark = pytest.mark.fuse


def callbacks(m, name: str) -> int:  # type: ignore[no-untyped-def]
    return int(m.status()["callbacks"].get(name, 0))


def ls_l(folder: Path) -> dict[str, tuple[str, int]]:
    """name → (type letter, size) from GNU ``ls -l``."""
    out = subprocess.run(["ls", "-l", "--time-style=+%s", str(folder)], capture_output=True,
                         text=True, check=True, timeout=120).stdout
    rows = {}
    for line in out.splitlines()[1:]:  # "total N" first
        fields = line.split(maxsplit=6)
        rows[fields[6]] = (fields[0][0], int(fields[4]))
    return rows


def test_ls_l_makes_no_getattr_per_entry_and_shows_the_listing_attributes(client, dataset,
                                                                          mount):
    # 300 entries: more than one READDIRPLUS buffer, so the kernel asks again with offsets
    names = [f"p{i:03d}.png" for i in range(300)]
    made = seed_images(client, dataset.id, "/many", names)
    seed_images(client, dataset.id, "/many/sub", ["s.png"])
    m = mount(dataset.name, "--read-only")
    os.listdir(m.path)  # the root first, so "many" is known
    getattrs = callbacks(m, "getattr")
    rows = ls_l(m.path / "many")
    # the folder itself may be looked up; its 301 entries may not
    assert callbacks(m, "getattr") - getattrs <= 2
    assert sorted(rows) == sorted(names + ["sub"])
    assert rows["sub"][0] == "d"
    for name, (image, data) in made.items():
        assert rows[name] == ("-", len(data)), name
    # stat right after the listing: the kernel's attributes from it, equal to the image's
    getattrs = callbacks(m, "getattr")
    for name, (image, data) in made.items():
        st = os.stat(m.path / "many" / name)
        assert stat.S_ISREG(st.st_mode) and st.st_size == len(data)
        assert abs(st.st_mtime - image.created_ts) < 1e-3
    assert callbacks(m, "getattr") - getattrs <= 2


def test_every_entry_listed_once_across_readdir_pages(client, dataset, mount):
    names = [f"n{i:04d}-{'x' * 40}.png" for i in range(700)]  # long names: many pages
    seed_images(client, dataset.id, "/", names)
    m = mount(dataset.name, "--read-only")
    listed = os.listdir(m.path)
    assert sorted(listed) == sorted(names)  # no duplicate, none missing, no .archive
    # a second pass through a fresh handle lists the same again
    with os.scandir(m.path) as entries:
        again = [(e.name, e.is_file(follow_symlinks=False)) for e in entries]
    assert sorted(again) == [(n, True) for n in sorted(names)]


def test_files_written_through_the_mount_show_with_their_size_in_ls_l(client, dataset, mount):
    seed_images(client, dataset.id, "/w", ["old.png"])
    m = mount(dataset.name)
    data = png_bytes(7)
    (m.path / "w" / "new.png").write_bytes(data)
    (m.path / "w" / "localdir").mkdir()
    os.unlink(m.path / "w" / "old.png")
    rows = ls_l(m.path / "w")
    assert rows["new.png"] == ("-", len(data))
    assert rows["localdir"][0] == "d"
    assert "old.png" not in rows


def test_reading_an_image_makes_no_flush_call_and_keeps_the_page_cache(client, dataset, mount):
    made = seed_images(client, dataset.id, "/", ["k.png"])
    m = mount(dataset.name, "--read-only")
    data = made["k.png"][1]
    assert (m.path / "k.png").read_bytes() == data
    before = m.status()
    for _ in range(3):
        assert (m.path / "k.png").read_bytes() == data
    after = m.status()
    assert after["callbacks"].get("flush", 0) == before["callbacks"].get("flush", 0)
    assert after["reads"] == before["reads"], "a repeat read did not come from the page cache"


def test_the_archive_lists_with_its_read_only_attributes(client, dataset, mount):
    made = seed_images(client, dataset.id, "/old", ["gone.png", "kept.png"])
    client.images.delete(made["gone.png"][0].id)  # archived
    m = mount(dataset.name)
    rows = ls_l(m.path / ".archive" / "old")
    assert rows == {"gone.png": ("-", len(made["gone.png"][1]))}
    st = os.stat(m.path / ".archive" / "old" / "gone.png")
    assert st.st_mode & 0o222 == 0  # read-only, as the listing said
    assert sorted(os.listdir(m.path / "old")) == ["kept.png"]


def test_the_kernel_keeps_names_of_a_fresh_listing_until_a_refresh_takes_them_back(
        client, dataset, mount):
    """With ``--dir-cache-time`` above 1 s the kernel keeps what a fresh listing answered for
    as long as the listing stays fresh, and ``pictofs refresh`` takes it back at once."""
    made = seed_images(client, dataset.id, "/k", [f"k{i:02d}.png" for i in range(30)])
    m = mount(dataset.name, "--dir-cache-time", "1h")
    folder = m.path / "k"
    for name in made:
        os.stat(folder / name)
    time.sleep(1.5)  # past the 1 s the kernel kept names for before
    getattrs = callbacks(m, "getattr")
    for name, (_image, data) in made.items():
        assert os.stat(folder / name).st_size == len(data)
    assert callbacks(m, "getattr") == getattrs, "a second stat went to the daemon"
    # changes through the API, to names the kernel holds: shown right after the refresh
    client.images.delete(made["k00.png"][0].id)
    client.images.delete(made["k01.png"][0].id)
    m.refresh()
    assert not os.path.exists(folder / "k00.png")
    assert "k01.png" not in os.listdir(folder)
    assert os.stat(folder / "k02.png").st_size == len(made["k02.png"][1])
    # the name itself was taken back, not only its attributes: writing it again asks the
    # daemon to create it (a kept name would be opened, and is gone)
    data = png_bytes(5)
    (folder / "k01.png").write_bytes(data)
    assert os.stat(folder / "k01.png").st_size == len(data)


def test_a_file_written_and_stored_under_its_name_shows_its_stored_attributes(client, dataset,
                                                                                mount):
    """This mount's own files: the kernel keeps a pending file's attributes 1 s, so what the
    upload changes shows; the stored image then stays in the kernel like any listed one."""
    m = mount(dataset.name, "--write-back", "0s")
    data = png_bytes(9)
    (m.path / "mine.png").write_bytes(data)
    synced = subprocess.run([sys.executable, "-m", "pictofs", "sync", str(m.path)],
                            capture_output=True, text=True, env=m.env, timeout=180,
                            stdin=subprocess.DEVNULL)
    assert synced.returncode == 0, synced.stderr
    assert os.stat(m.path / "mine.png").st_size == len(data)
    time.sleep(1.5)
    getattrs = callbacks(m, "getattr")
    assert os.stat(m.path / "mine.png").st_size == len(data)
    assert callbacks(m, "getattr") - getattrs <= 1


def test_every_name_ls_listed_stays_in_the_kernel(client, dataset, mount):
    """Every page of the listing comes with its attributes (not only the first), and the
    kernel keeps them while the listing is fresh: no call per name after ``ls``."""
    made = seed_images(client, dataset.id, "/l", [f"l{i:03d}.png" for i in range(400)])
    m = mount(dataset.name, "--dir-cache-time", "1h", "--read-only")
    assert len(os.listdir(m.path / "l")) == len(made)
    time.sleep(1.5)  # past the 1 s the kernel kept names for before
    getattrs = callbacks(m, "getattr")
    for name, (_image, data) in made.items():
        assert os.stat(m.path / "l" / name).st_size == len(data)
    assert callbacks(m, "getattr") - getattrs <= 1


# A process that keeps the kernel busy with names of one folder while the daemon takes them
# back: lists and stats them, writes, renames and removes files of its own. It ends when the
# mount is dead (its daemon gone); it runs apart from the test, which never touches the
# mount while a daemon may be stuck.
LOAD = r"""
import errno, os, sys
folder, source = sys.argv[1], sys.argv[2]
data = open(source, "rb").read()
i = 0
while True:
    try:
        for name in os.listdir(folder):
            try:
                os.stat(os.path.join(folder, name))
            except FileNotFoundError:
                pass
        mine = os.path.join(folder, "load%02d.png" % (i % 20))
        with open(mine + ".part", "wb") as out:
            out.write(data)
        os.rename(mine + ".part", mine)
        if i % 3 == 0:
            os.unlink(mine)
        i += 1
    except OSError as exc:
        if exc.errno in (errno.ENOTCONN, errno.ECONNABORTED):
            sys.exit(0)
"""

WATCHDOG = 60.0  # seconds a killed daemon gets to go away before its connection is aborted


def _exited(pid: int) -> bool:
    """Every thread of the process is gone or a zombie, so its files (``/dev/fuse`` among
    them) are closed. The main thread alone is not enough: it shows as a zombie while
    another thread still waits in the kernel."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return True
    for task in tasks:
        try:
            state = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue  # gone meanwhile
        if state not in ("Z", "X"):
            return False
    return True


def _abort(path: Path) -> None:
    """What the watchdog does: abort the connection (everything stuck on it ends) and
    unmount lazily, so no dead mount outlives the test."""
    abort_connection(str(path))
    subprocess.run(["fusermount3", "-uz", str(path)], capture_output=True, timeout=60)


def _stuck_threads(pid: int) -> str:
    """Where a stuck daemon's threads wait in the kernel, for the failure message."""
    lines = []
    for task in sorted(Path(f"/proc/{pid}/task").glob("*")):
        try:
            state = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
            wchan = (task / "wchan").read_text()
        except OSError:
            continue
        lines.append(f"{task.name} {state} {wchan}")
    return "\n".join(lines)


def test_a_daemon_killed_while_it_takes_names_back_always_exits(client, dataset, mount,
                                                                tmp_path):
    """``kill -9`` at any moment leaves a dead mount that the next ``pictofs mount`` cleans:
    the daemon never waits in the kernel for a request of its own mount (see
    ``kernel_cache``). A watchdog aborts the connection if the daemon did not exit, and the
    test fails if it had to."""
    seed_images(client, dataset.id, "/busy", [f"b{i:02d}.png" for i in range(40)])
    source = tmp_path / "load.png"
    source.write_bytes(png_bytes(3))
    m = mount(dataset.name, "--dir-cache-time", "1h", "--write-back", "0s")
    for round_ in range(4):
        pid = int(m.status()["pid"])
        load = subprocess.Popen([sys.executable, "-c", LOAD, str(m.path / "busy"), str(source)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        stop = threading.Event()

        def hup() -> None:  # SIGHUP: the daemon drops its listings and takes everything back
            while not stop.wait(0.01):
                try:
                    os.kill(pid, signal.SIGHUP)
                except ProcessLookupError:
                    return

        hupper = threading.Thread(target=hup, daemon=True)
        try:
            before = m.status()["kernel_takebacks"]
            hupper.start()
            wait_for(lambda: m.status()["kernel_takebacks"] >= before + 30,
                     "take-backs while the folder is busy")
            time.sleep(random.uniform(0.0, 0.2))  # anywhere in the middle of them
            os.kill(pid, signal.SIGKILL)
        except BaseException:
            load.kill()
            raise
        finally:
            stop.set()
        hupper.join()
        m.mounted = False
        deadline = time.monotonic() + WATCHDOG
        while not _exited(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not _exited(pid):
            threads = _stuck_threads(pid)
            _abort(m.path)
            load.kill()
            pytest.fail(f"round {round_}: the killed daemon did not exit; its connection had "
                        f"to be aborted. Its threads:\n{threads}")
        try:
            load.wait(timeout=WATCHDOG)
        except subprocess.TimeoutExpired:
            _abort(m.path)
            load.kill()
            pytest.fail(f"round {round_}: a process using the mount hung after the daemon "
                        "exited")
        assert load.returncode == 0, load.stderr.read().decode() if load.stderr else ""
        # the next mount cleans the dead one and serves the folder
        m = mount(dataset.name, "--dir-cache-time", "1h", "--write-back", "0s",
                  mountpoint=m.path)
        listed = set(os.listdir(m.path / "busy"))
        assert {f"b{i:02d}.png" for i in range(40)} <= listed


def all_routes(server) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Request counts by "METHOD route", without the test's own /metrics reads, settled
    (``ServerHandle.settled_metrics``)."""
    counts: dict[str, int] = {}
    for (method, route, _status), n in server.settled_metrics().items():
        if route not in ("/metrics", "/healthz"):
            key = f"{method} {route.removeprefix('/api/v1/developer')}"
            counts[key] = counts.get(key, 0) + n
    return counts


def test_mount_and_ls_of_the_root_ask_three_questions(server, client, dataset, mount):
    seed_images(client, dataset.id, "/", ["a.png"])
    seed_images(client, dataset.id, "/sub", ["b.png"])
    before = all_routes(server)
    m = mount(dataset.name, "--read-only")
    assert sorted(os.listdir(m.path)) == ["a.png", "sub"]
    after = all_routes(server)
    changed = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    # the parent checks the key and finds the dataset; its daemon is handed the dataset and
    # asks only for the root's listing (one page and the folders call, sent together)
    assert changed == {"GET /datasets/{dataset}": 1, "GET /images/": 1,
                       "GET /directories/{dataset}": 1}


def test_ls_r_lists_each_folder_once_with_the_siblings_listed_ahead(server, client, dataset,
                                                                     mount):
    folders = [f"/d{i}" for i in range(8)]
    for folder in folders:
        seed_images(client, dataset.id, folder, [f"{folder[1:]}-{n}.png" for n in range(3)])
    m = mount(dataset.name, "--read-only")
    os.listdir(m.path)
    before = all_routes(server)
    out = subprocess.run(["ls", "-R", str(m.path)], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    assert all(f"{folder[1:]}-2.png" in out for folder in folders)
    after = all_routes(server)
    changed = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    # one page and one folders call per folder, whether ls or the listing ahead asked
    assert changed == {"GET /images/": 8, "GET /directories/{dataset}": 8}
