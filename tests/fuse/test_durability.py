"""Durability of the write-back queue through a real mount (filesystem §4 ``--min-free-space``,
§5 "Durability" and "Failures", §8 ``sync``/``umount``/``status``).

- ``kill -9`` of the daemon with 200 uploads pending, and crashes at exact steps of an upload
  (``PICTOFS_FAULT=crash:after_put`` / ``crash:after_register``, which SIGKILL the daemon right
  there): the next ``pictofs mount`` on the same mountpoint cleans the stale mount and resumes
  the journal, and ``pictofs sync`` lands every file exactly once, none lost, no staging file
  left behind.
- The service unreachable (a fault proxy refusing every connection) while ``cp -r`` writes:
  the copy finishes without the network; the uploads wait and land once it is back.
- A permanent refusal (415) ends as ``failed``: listed by ``pictofs status``, visible with
  ``user.pictofs.error``, named by ``pictofs sync`` and ``pictofs umount`` (non-zero, no hang),
  discarded by ``rm``.
- ``pictofs sync`` starts uploads held back only by ``--write-back``; ``pictofs umount``
  waits for pending uploads with a progress line, then unmounts.
- A small staging disk with ``--min-free-space``: ``ENOSPC`` past the limit, the cut-off
  file dropped (never uploaded), earlier files kept and uploaded once space returns.

Nothing here waits on the wall clock except polls with a deadline.
"""

from __future__ import annotations

import errno
import shutil
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from faultproxy import FaultProxy
from imagegen import jpeg_bytes, png_bytes, sized_jpeg
from mountkit import (Counts, assert_registers_follow_urls, crash_mount, journal_folder,
                      kill_daemon, live, pictofs_cmd, service_bytes, staging_files, sync,
                      wait_for)
from pictofs.config import OPTIONS
from pictofs.core.upload.batch import REGISTER_PIECE

pytestmark = pytest.mark.fuse

MB = 1024 * 1024
REGISTER_PATH = r"/images/register$"
TRANSFERS = int(next(o.default for o in OPTIONS if o.name == "transfers"))  # upload workers


@pytest.fixture()
def proxy(server):  # type: ignore[no-untyped-def]
    with FaultProxy(upstream=server.base_url, seed=2) as p:
        yield p


def write_files(folder: Path, files: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)


def pngs(count: int, seed: int = 0, prefix: str = "img") -> dict[str, bytes]:
    return {f"{prefix}{n:04d}.png": png_bytes(seed + n) for n in range(count)}


def cp_tree(source: Path, target: Path) -> None:
    """``cp -r SOURCE/. TARGET/``: must succeed."""
    result = subprocess.run(["cp", "-r", f"{source}/.", f"{target}/"], capture_output=True,
                            text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr


def uploads_status(m) -> dict:  # type: ignore[no-untyped-def, type-arg]
    return m.status()["uploads"]


def assert_exactly_once(client, dataset, folder: str,  # type: ignore[no-untyped-def]
                        files: dict[str, bytes], scratch: Path) -> None:
    """The folder holds exactly these files, each once, with these bytes, and nothing of
    the dataset is archived (no second copy was made and then replaced)."""
    images = list(client.images.list(dataset.id, include_archived=True))
    names = sorted(img.filename for img in images if img.directory_path == folder)
    assert names == sorted(files), "missing or duplicate images"
    assert not [img.path for img in images if img.is_archived]
    for image in images:
        assert service_bytes(client, image.id, scratch) == files[image.filename], image.path


# ---------------------------------------------------------------------- kill -9 and crashes


def test_kill_9_with_200_pending_uploads_lands_each_exactly_once(client, dataset, mount, server,
                                                                tmp_path):
    files = pngs(200)
    write_files(tmp_path / "src", files)
    counts = Counts(server)
    m = mount(dataset.name, "--write-back", "1h")
    (m.path / "many").mkdir()
    cp_tree(tmp_path / "src", m.path / "many")
    wait_for(lambda: uploads_status(m)["pending"] == 200, "200 pending journal entries")
    assert counts.uploads() == 0
    kill_daemon(m)
    assert len(staging_files(m, dataset)) == 200

    again = mount(dataset.name, "--write-back", "0.2s", mountpoint=m.path)
    sync(again)
    assert_exactly_once(client, dataset, "/many", files, tmp_path)
    # each file sent once; all due together at the restart, they went up in batches
    assert counts.puts() == 200, counts.succeeded()
    succeeded = counts.succeeded()
    assert_registers_follow_urls(succeeded, counts.puts())
    assert succeeded["bulk_register"] >= 1, succeeded
    assert staging_files(again, dataset) == []
    status = uploads_status(again)
    assert (status["pending"], status["in_flight"], status["failed"]) == (0, 0, [])
    assert sorted(os.listdir(again.path / "many")) == sorted(files)


def crashed_mid_upload(mount, dataset, folder: str,  # type: ignore[no-untyped-def]
                       files: dict[str, bytes], scratch: Path, point: str, hit: int):
    """Copy ``files`` into the new ``folder`` with uploads held back and kill -9 the daemon
    (each file is then a resumable journal entry), then mount again to resume them and die
    the ``hit``-th time an upload reaches the crash point ``point``. Returns the mount."""
    write_files(scratch / "src", files)
    m = mount(dataset.name, "--write-back", "1h")
    (m.path / folder.lstrip("/")).mkdir()
    cp_tree(scratch / "src", m.path / folder.lstrip("/"))
    wait_for(lambda: uploads_status(m)["pending"] == len(files),
             f"{len(files)} pending journal entries")
    kill_daemon(m)
    crash_mount(mount, m, dataset.name, point, hit)
    return m


def finished_after_crash(mount, dataset, m):  # type: ignore[no-untyped-def]
    """A clean mount on ``m``'s mountpoint and ``pictofs sync``: it finishes the job, with
    no staging file and no entry left. Returns it."""
    again = mount(dataset.name, "--write-back", "0.2s", mountpoint=m.path)
    sync(again)
    assert staging_files(again, dataset) == []
    status = uploads_status(again)
    assert (status["pending"], status["in_flight"], status["failed"]) == (0, 0, [])
    return again


@pytest.mark.parametrize("point", ["after_put", "after_register"])
def test_crash_at_an_upload_step_loses_nothing_and_duplicates_nothing(client, dataset, mount,
                                                                      tmp_path, point):
    """The mount that resumes 24 staged files dies the third time it reaches the step."""
    files = pngs(24, seed=1000)
    m = crashed_mid_upload(mount, dataset, "/crash", files, tmp_path, point, 3)
    finished_after_crash(mount, dataset, m)
    assert_exactly_once(client, dataset, "/crash", files, tmp_path)



@pytest.mark.parametrize("point", ["after_put", "after_register"])
def test_a_crash_between_the_pieces_of_a_large_batch_loses_nothing(client, dataset, mount,
                                                                   tmp_path, point):
    """A batch of 200 registers what landed ``REGISTER_PIECE`` files at a time: the daemon
    dies at the step of its second piece, with the first piece registered and recorded and
    the rest PUT or not yet. The next mount lands each file exactly once."""
    files = pngs(200, seed=1500)
    m = crashed_mid_upload(mount, dataset, "/pieces", files, tmp_path, point, REGISTER_PIECE + 1)
    landed = live(client, dataset, "/pieces")
    assert REGISTER_PIECE <= len(landed) < 200, len(landed)  # the crash came mid-batch
    finished_after_crash(mount, dataset, m)
    assert_exactly_once(client, dataset, "/pieces", files, tmp_path)


# ---------------------------------------------------------------------- service unreachable


def test_cp_finishes_while_the_service_is_unreachable_and_uploads_follow(client, dataset, mount,
                                                                         proxy, tmp_path):
    files = pngs(20, seed=2000)
    write_files(tmp_path / "src", files)
    m = mount(dataset.name, "--write-back", "0.2s", "--retry-max-wait", "1s",
              "--dir-cache-time", "5m", base_url=proxy.url)
    (m.path / "offline").mkdir()
    assert os.listdir(m.path / "offline") == []  # the folder's listing is now known
    proxy.pause()
    cp_tree(tmp_path / "src", m.path / "offline")  # returns with the service still away
    assert sorted(os.listdir(m.path / "offline")) == sorted(files)
    for name, data in files.items():
        assert (m.path / "offline" / name).read_bytes() == data
    status = uploads_status(m)
    assert status["pending"] + status["in_flight"] == 20 and status["failed"] == []
    assert live(client, dataset, "/offline") == {}
    proxy.resume()
    sync(m)
    assert_exactly_once(client, dataset, "/offline", files, tmp_path)
    assert staging_files(m, dataset) == []


def test_sync_does_not_wait_out_a_long_write_back(client, dataset, mount, tmp_path):
    """``pictofs sync`` asks for the service now: uploads held back only by ``--write-back``
    start at once; a file still open for writing is not waited for."""
    files = pngs(3, seed=2500)
    m = mount(dataset.name, "--write-back", "1h")
    write_files(m.path, files)
    with open(m.path / "open.png", "wb") as still_open:
        still_open.write(png_bytes(2600))
        still_open.flush()
        sync(m)
        assert_exactly_once(client, dataset, "/", files, tmp_path)
    wait_for(lambda: uploads_status(m)["pending"] == 1, "open.png to wait for --write-back")


# ---------------------------------------------------------------------- permanent failures


def truncated_png(seed: int) -> bytes:
    """A PNG cut in half: its header identifies it (so the mount takes it), but the service
    decodes it in full and refuses it with 415."""
    whole = png_bytes(seed, size=(64, 48))
    return whole[:len(whole) // 2]


@pytest.mark.parametrize("refusal", ["proxy", "service"])
def test_a_415_ends_as_failed_and_rm_discards_it(client, dataset, mount, proxy, refusal):
    """``proxy``: the register answers 415; ``service``: the service itself refuses bytes
    the mount's header check accepted."""
    m = mount(dataset.name, "--write-back", "0.2s", base_url=proxy.url)
    if refusal == "proxy":
        proxy.fail_next(415, path=REGISTER_PATH, method="POST")
        name, data = "bad.jpg", jpeg_bytes(31)
    else:
        name, data = "bad.png", truncated_png(32)
    bad = m.path / name
    bad.write_bytes(data)
    wait_for(lambda: uploads_status(m)["failed"], "the upload to fail")

    failed = uploads_status(m)["failed"]
    assert [f["path"] for f in failed] == ["/" + name]
    reason = failed[0]["error"]
    assert "415" in reason or "unsupported" in reason.lower() or "decod" in reason, reason
    text = pictofs_cmd(m, "status", str(m.path))
    assert text.returncode == 0 and f"/{name}: {reason}" in text.stdout, text.stdout
    attr = subprocess.run(["getfattr", "--only-values", "-n", "user.pictofs.error", str(bad)],
                          capture_output=True, text=True, timeout=30)
    assert attr.returncode == 0 and attr.stdout == reason, attr.stderr
    assert bad.read_bytes() == data

    result = pictofs_cmd(m, "sync", str(m.path), timeout=60)
    assert result.returncode != 0
    assert f"/{name}: {reason}" in result.stderr, result.stderr

    os.unlink(bad)
    assert not bad.exists()
    sync(m)
    assert uploads_status(m)["failed"] == []
    assert live(client, dataset) == {}
    assert staging_files(m, dataset) == []


# ---------------------------------------------------------------------- umount


def test_umount_waits_for_pending_uploads_then_unmounts(client, dataset, mount, proxy, tmp_path):
    files = pngs(10, seed=3000)
    write_files(tmp_path / "src", files)
    m = mount(dataset.name, "--write-back", "0.2s", "--retry-max-wait", "1s",
              "--dir-cache-time", "5m", base_url=proxy.url)
    (m.path / "late").mkdir()
    os.listdir(m.path / "late")
    proxy.pause()
    cp_tree(tmp_path / "src", m.path / "late")
    umount = subprocess.Popen([sys.executable, "-m", "pictofs", "umount", str(m.path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=m.env,
                              stdin=subprocess.DEVNULL)
    said: list[str] = []
    reader = threading.Thread(target=lambda: said.extend(iter(
        lambda: umount.stderr.read(1).decode("utf-8", "replace"), "")), daemon=True)
    reader.start()
    try:
        wait_for(lambda: "waiting for" in "".join(said), "the umount progress line")
        assert umount.poll() is None, "umount returned with uploads still pending"
        assert os.path.ismount(m.path)
        proxy.resume()
        assert umount.wait(timeout=120) == 0, "".join(said)
    finally:
        if umount.poll() is None:
            umount.kill()
        reader.join(timeout=10)
    m.mounted = False
    assert not os.path.ismount(m.path)
    assert "unmounted" in "".join(said)
    assert_exactly_once(client, dataset, "/late", files, tmp_path)


def test_umount_with_a_failed_upload_exits_non_zero_naming_it(client, dataset, mount, tmp_path):
    m = mount(dataset.name, "--write-back", "0.2s")
    good = png_bytes(41)
    (m.path / "good.png").write_bytes(good)
    (m.path / "broken.png").write_bytes(truncated_png(42))
    wait_for(lambda: uploads_status(m)["failed"], "the broken upload to fail")
    result = m.umount()
    m.mounted = False
    assert result.returncode != 0
    assert "/broken.png" in result.stderr and "good.png" not in result.stderr
    assert not os.path.ismount(m.path)
    assert {p: service_bytes(client, i.id, tmp_path) for p, i in live(client, dataset).items()} \
        == {"/good.png": good}
    # the failed entry is kept in the journal: the next mount still lists it
    again = mount(dataset.name, "--write-back", "0.2s", mountpoint=m.path)
    assert [f["path"] for f in uploads_status(again)["failed"]] == ["/broken.png"]
    os.unlink(again.path / "broken.png")
    assert again.umount().returncode == 0
    assert staging_files(again, dataset) == []


# ---------------------------------------------------------------------- --min-free-space


def state_disk(tmp_path: Path, size: str):  # type: ignore[no-untyped-def]
    """A tmpfs of ``size`` (``16m``) to hold the mount's state dir (journal and staging),
    unmounted when the test ends."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "statedisk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                    str(disk)], check=True, timeout=30)
    yield disk
    if subprocess.run(["umount", str(disk)], capture_output=True, timeout=30).returncode:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True, timeout=30)


@pytest.fixture()
def small_state_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A 16 MiB tmpfs to hold the mount's state dir (journal and staging)."""
    yield from state_disk(tmp_path, "16m")


@pytest.fixture()
def full_state_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A 20 MiB tmpfs for the state dir, that a test fills to the last byte and then grows
    (``grow``)."""
    yield from state_disk(tmp_path, "20m")


def grow(disk: Path, size: str) -> None:
    """Give a tmpfs more room (as an admin frees or adds space under a full disk)."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(disk)], check=True, timeout=30)


def test_min_free_space_refuses_writes_with_enospc_and_keeps_earlier_files(
        small_state_disk, client, dataset, mount, proxy, tmp_path):
    m = mount(dataset.name, "--write-back", "0.2s", "--retry-max-wait", "1s",
              "--min-free-space", "8M", "--dir-cache-time", "5m", base_url=proxy.url,
              env={"XDG_STATE_HOME": str(small_state_disk)})
    assert journal_folder(m, dataset).is_relative_to(small_state_disk)
    (m.path / "full").mkdir()
    os.listdir(m.path / "full")
    proxy.pause()  # nothing leaves staging while the disk fills
    kept: dict[str, bytes] = {}
    refused = None
    for n in range(8):  # 8 × 2 MiB is more than the 16 MiB disk less the 8 MiB kept free
        name, data = f"f{n}.jpg", sized_jpeg(2 * MB, seed=n)
        try:
            with open(m.path / "full" / name, "wb") as handle:
                handle.write(data)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
            refused = name
            break
        kept[name] = data
    assert refused is not None, "no write was refused"
    assert len(kept) >= 2
    # the cut-off file is never uploaded and is gone once closed (FUSE sends the release
    # after close() has returned, so "once closed" is a moment after it)
    wait_for(lambda: not (m.path / "full" / refused).exists(), f"{refused} to go")
    for name, data in kept.items():
        assert (m.path / "full" / name).read_bytes() == data

    proxy.resume()  # the uploads land and free the staging disk
    sync(m)
    assert_exactly_once(client, dataset, "/full", kept, tmp_path)
    assert staging_files(m, dataset) == []
    later = sized_jpeg(2 * MB, seed=99)
    (m.path / "full" / "later.jpg").write_bytes(later)
    sync(m)
    assert_exactly_once(client, dataset, "/full", {**kept, "later.jpg": later}, tmp_path)
    assert m.umount().returncode == 0


def test_a_full_state_disk_is_enospc_and_uploads_resume_when_it_grows(
        full_state_disk, client, dataset, mount, proxy, tmp_path):
    """The state disk fills to the last byte (``--min-free-space 0``) while uploads cannot
    leave (the service is away): the staging writes and the journal's commits meet a full
    disk. Every refusal is ENOSPC (never EIO), no upload worker dies, nothing is left "in
    flight"; once the disk has room again and the service is back, ``pictofs sync`` lands
    every file whose writer saw it succeed, exactly once, and ``umount`` works."""
    m = mount(dataset.name, "--write-back", "4s", "--retry-max-wait", "1s",
              "--min-free-space", "0", "--dir-cache-time", "5m", base_url=proxy.url,
              env={"XDG_STATE_HOME": str(full_state_disk)})
    (m.path / "full").mkdir()
    os.listdir(m.path / "full")
    proxy.pause()
    kept: dict[str, bytes] = {}
    refused: dict[str, int | None] = {}

    def write(name: str, data: bytes) -> None:
        try:
            with open(m.path / "full" / name, "wb") as handle:
                handle.write(data)
        except OSError as exc:
            refused[name] = exc.errno
        else:
            kept[name] = data

    for n in range(12):  # 12 × 2 MiB: more than the 20 MiB disk holds
        write(f"f{n:02d}.jpg", sized_jpeg(2 * MB, seed=200 + n))
    assert refused, "the disk never filled"
    for n in range(60):  # then small files, until the journal has no room either
        write(f"s{n:02d}.jpg", sized_jpeg(64 * 1024, seed=300 + n))
        if len([name for name in refused if name.startswith("s")]) >= 5:
            break
    assert set(refused.values()) == {errno.ENOSPC}, refused
    assert len(kept) >= 2
    # the workers meet the full disk (and the missing service) with every kept file
    wait_for(lambda: all(f"upload of /full/{name} failed" in m.log() for name in kept),
             "every kept file to be tried")
    status = uploads_status(m)
    assert status["workers"] == TRANSFERS, status  # every one alive
    for name in refused:  # a cut-off file is never uploaded and is gone once closed
        wait_for(lambda: not (m.path / "full" / name).exists(), f"{name} to go")

    grow(full_state_disk, "200m")
    proxy.resume()
    sync(m, timeout=120)
    assert_exactly_once(client, dataset, "/full", kept, tmp_path)
    assert staging_files(m, dataset) == []
    status = uploads_status(m)
    assert (status["pending"], status["in_flight"], status["failed"]) == (0, 0, [])
    assert status["workers"] == TRANSFERS, status
    later = sized_jpeg(2 * MB, seed=399)
    (m.path / "full" / "later.jpg").write_bytes(later)
    sync(m)
    assert_exactly_once(client, dataset, "/full", {**kept, "later.jpg": later}, tmp_path)
    log = m.log()
    assert "Traceback" not in log and "bug in" not in log, log[-3000:]
    assert m.umount().returncode == 0


# ----------------------------------------------------------- nothing lost, whatever moved


def test_pending_uploads_are_found_again_after_the_base_url_and_key_change(
        client, dataset, mount, server, proxy, tmp_path):
    """The embedded server starts on a new port every time and keys get rotated: what was
    pending must resume at the next mount whatever the base URL or key."""
    files = pngs(3, seed=3100)
    m = mount(dataset.name, "--write-back", "1h", base_url=proxy.url)
    write_files(m.path / "moved", files)
    wait_for(lambda: uploads_status(m)["pending"] == 3, "3 pending journal entries")
    kill_daemon(m)
    other_key = server.create_key("member")
    again = mount(dataset.name, "--write-back", "0.2s", mountpoint=m.path,
                  env={"PICTOGRAPH_API_KEY": other_key})  # direct, and another key
    assert sorted(os.listdir(again.path / "moved")) == sorted(files)
    sync(again)
    assert_exactly_once(client, dataset, "/moved", files, tmp_path)


def test_an_organization_mount_resumes_every_dataset_with_pending_uploads(
        client, dataset, mount, tmp_path):
    files = pngs(2, seed=3200)
    m = mount(None, "--write-back", "1h")
    write_files(m.path / dataset.name / "org", files)
    wait_for(lambda: uploads_status(m)["pending"] == 2, "2 pending journal entries")
    kill_daemon(m)
    again = mount(None, "--write-back", "0.2s", mountpoint=m.path)
    # no path of the dataset is touched: the mount itself must resume it
    assert uploads_status(again)["pending"] + len(live(client, dataset, "/org")) == 2
    sync(again)
    assert_exactly_once(client, dataset, "/org", files, tmp_path)
    assert again.umount().returncode == 0


def test_a_removed_journal_keeps_the_staged_files_aside_and_says_where(
        client, dataset, mount, tmp_path):
    files = pngs(4, seed=3300)
    m = mount(dataset.name, "--write-back", "1h")
    write_files(m.path / "lost", files)
    wait_for(lambda: uploads_status(m)["pending"] == 4, "4 pending journal entries")
    kill_daemon(m)
    folder = journal_folder(m, dataset)
    for name in ("journal.db", "journal.db-wal", "journal.db-shm"):
        (folder / name).unlink(missing_ok=True)
    again = mount(dataset.name, "--write-back", "0.2s", mountpoint=m.path)
    quarantine = folder / "quarantine"
    kept = {p.relative_to(quarantine).as_posix(): p.read_bytes()
            for p in quarantine.rglob("*") if p.is_file()}
    assert kept == {f"lost/{name}": data for name, data in files.items()}
    assert uploads_status(again)["kept_aside"] == [str(quarantine / k) for k in sorted(kept)]
    text = pictofs_cmd(again, "status", str(again.path)).stdout
    assert "kept aside: 4 staged file(s)" in text and str(quarantine) in text
    assert "kept aside in" in again.log()
    # copying them back in uploads them
    for name in files:
        shutil.copy(quarantine / "lost" / name, again.path / name)
    sync(again)
    assert_exactly_once(client, dataset, "/", files, tmp_path)
