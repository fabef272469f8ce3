"""The mirror's pure decisions, fed literal inputs: where a local path goes, which local
entries count, the reconcile plan (local files + state rows + service listing → actions),
and event coalescing (timed event lists → settled batches)."""

from __future__ import annotations

import pytest

from pictofs.mirror.coalesce import Coalescer, Event, Settled, coalesce
from pictofs.mirror.plan import (
    Known, LocalFile, Plan, Policy, Row, Destination, Verdict, classify, ignored_folder, plan_sync,
)
from pictofs.model import Image

MB = 1024 * 1024


def f(rel: str, size: int = 100, mtime: int = 1, sha: str | None = None) -> LocalFile:
    return LocalFile(rel, size, mtime, sha)


def row(rel: str, image_id: str, size: int = 100, mtime: int = 1, sha: str = "s1",
        folder: str | None = None, name: str | None = None, superseded: bool = False) -> Row:
    if folder is None:
        folder = Destination().folder_for(rel)
    return Row(rel, size, mtime, sha, image_id, folder, name or rel.rsplit("/", 1)[-1],
               superseded)


def img(image_id: str, folder: str, name: str, size: int = 100) -> Image:
    return Image(id=image_id, dataset_id="ds", filename=name, directory_path=folder,
                 file_size=size)


def listing(*images: Image) -> dict[tuple[str, str], Image]:
    return {(i.directory_path, i.filename): i for i in images}


def files(*items: LocalFile) -> dict[str, LocalFile]:
    return {i.rel: i for i in items}


def rows(*items: Row) -> dict[str, Row]:
    return {i.rel: i for i in items}


def summary(plan: Plan) -> dict[str, object]:
    """A plan in plain words, for comparing with a literal."""
    out: dict[str, object] = {}
    if plan.uploads:
        out["upload"] = [(u.file.rel, u.folder, u.replaced_id,
                          u.retire.rel if u.retire else None, u.archive) for u in plan.uploads]
    for name in ("touches", "adopts"):
        items = getattr(plan, name)
        if items:
            out[name] = [i.file.rel for i in items]
    if plan.moves:
        out["moves"] = [(m.row.rel, m.file.rel, m.folder) for m in plan.moves]
    if plan.relinks:
        out["relinks"] = [(r.row.rel, r.file.rel) for r in plan.relinks]
    for name in ("archives", "kept", "forgets"):
        items = getattr(plan, name)
        if items:
            out[name] = [r.rel for r in items]
    if plan.failures:
        out["failures"] = [(x.rel, x.known) for x in plan.failures]
    if plan.hash_first:
        out["hash_first"] = [x.rel for x in plan.hash_first]
    if plan.unchanged:
        out["unchanged"] = plan.unchanged
    if plan.in_flight:
        out["in_flight"] = plan.in_flight
    if plan.refused:
        out["refused"] = True
    return out


# ---------------------------------------------------------------------- mapping


@pytest.mark.parametrize("target, rel, expected", [
    (Destination("/"), "x.jpg", ("/", "x.jpg")),
    (Destination("/"), "a/b/x.jpg", ("/a/b", "x.jpg")),
    (Destination("/photos"), "a/b/x.jpg", ("/photos/a/b", "x.jpg")),
    (Destination("/photos"), "x.jpg", ("/photos", "x.jpg")),
    (Destination("/", organize_by_class=True), "cats/deep/er/x.jpg", ("/cats", "x.jpg")),
    (Destination("/p", organize_by_class=True), "x.jpg", ("/p", "x.jpg")),
    (Destination("/"), "cam/IMG_1.HEIC", ("/cam", "IMG_1.png")),
    (Destination("/"), "h.heic.jpg", ("/", "h.heic.jpg")),
])
def test_place(target: Destination, rel: str, expected: tuple[str, str]) -> None:
    assert target.place(rel) == expected


@pytest.mark.parametrize("rel, link, regular, size, verdict", [
    ("a/x.jpg", False, True, 10, Verdict.CANDIDATE),
    ("a/x.JPEG", False, True, 10, Verdict.CANDIDATE),
    (".x.jpg.AbC123", False, True, 10, Verdict.IGNORED),
    ("x.jpg~", False, True, 10, Verdict.IGNORED),
    ("x.jpg.part", False, True, 10, Verdict.IGNORED),
    ("Thumbs.db", False, True, 10, Verdict.IGNORED),
    (".Trash-1000/files/x.jpg", False, True, 10, Verdict.IGNORED),
    (".git/objects/x.png", False, True, 10, Verdict.IGNORED),
    ("link.jpg", True, False, 10, Verdict.SYMLINK),
    ("fifo.jpg", False, False, 0, Verdict.NOT_REGULAR),
    ("notes.txt", False, True, 10, Verdict.UNSUPPORTED),
    ("noext", False, True, 10, Verdict.UNSUPPORTED),
    ("empty.png", False, True, 0, Verdict.EMPTY),
    ("big.jpg", False, True, 50 * MB + 1, Verdict.TOO_LARGE),
    ("limit.jpg", False, True, 50 * MB, Verdict.CANDIDATE),
    ("bad\x01name.jpg", False, True, 10, Verdict.BAD_NAME),
    ("dir\x02/x.jpg", False, True, 10, Verdict.BAD_NAME),
])
def test_classify(rel: str, link: bool, regular: bool, size: int, verdict: Verdict) -> None:
    assert classify(rel, is_symlink=link, is_file=regular, size=size)[0] is verdict


def test_classify_checks_only_the_folder_names_the_service_sees() -> None:
    by_class = Destination(organize_by_class=True)
    assert classify("cats/bad\x02/x.jpg", is_symlink=False, is_file=True, size=1,
                    target=by_class)[0] is Verdict.CANDIDATE
    assert classify("cats/bad\x02/x.jpg", is_symlink=False, is_file=True, size=1,
                    target=Destination())[0] is Verdict.BAD_NAME


@pytest.mark.parametrize("rel, ignored", [
    (".git", True), ("a/.cache/b", True), ("a/b", False), ("photos~", True), ("a", False)])
def test_ignored_folder(rel: str, ignored: bool) -> None:
    assert ignored_folder(rel) is ignored


# ---------------------------------------------------------------------- start-up plans


TREE = Policy(Destination("/"))
DELETE = Policy(Destination("/"), delete=True, max_delete=2)
BY_CLASS = Policy(Destination("/", organize_by_class=True))

CASES = [
    # (id, local, rows, remote, policy, expected summary)
    ("new files are uploaded to their folders",
     files(f("x.jpg"), f("a/b/y.png")), {}, listing(), TREE,
     {"upload": [("a/b/y.png", "/a/b", None, None, False), ("x.jpg", "/", None, None, False)]}),
    ("an unchanged tree does nothing",
     files(f("x.jpg"), f("a/y.png")), rows(row("x.jpg", "i1"), row("a/y.png", "i2")),
     listing(img("i1", "/", "x.jpg"), img("i2", "/a", "y.png")), TREE, {"unchanged": 2}),
    ("a new size is a replace of the row's image",
     files(f("x.jpg", size=200, mtime=2)), rows(row("x.jpg", "i1")),
     listing(img("i1", "/", "x.jpg")), TREE,
     {"upload": [("x.jpg", "/", "i1", None, False)]}),
    ("a new mtime with the same size needs the hash first",
     files(f("x.jpg", mtime=2)), rows(row("x.jpg", "i1")), listing(img("i1", "/", "x.jpg")),
     TREE, {"hash_first": ["x.jpg"]}),
    ("a new mtime with the same bytes is only recorded",
     files(f("x.jpg", mtime=2, sha="s1")), rows(row("x.jpg", "i1")),
     listing(img("i1", "/", "x.jpg")), TREE, {"touches": ["x.jpg"]}),
    ("a new mtime with new bytes of the same size is a replace",
     files(f("x.jpg", mtime=2, sha="s2")), rows(row("x.jpg", "i1")),
     listing(img("i1", "/", "x.jpg")), TREE, {"upload": [("x.jpg", "/", "i1", None, False)]}),
    ("an image gone from the service is uploaded again",
     files(f("x.jpg")), rows(row("x.jpg", "i1")), listing(), TREE,
     {"upload": [("x.jpg", "/", None, None, False)]}),
    ("an image already there with the same size is adopted",
     files(f("x.jpg")), {}, listing(img("i9", "/", "x.jpg")), TREE, {"adopts": ["x.jpg"]}),
    ("a different image under the name, not ours, is a failure",
     files(f("x.jpg", size=5)), {}, listing(img("i9", "/", "x.jpg", size=7)), TREE,
     {"failures": [("x.jpg", False)]}),
    ("a HEIC file whose PNG is there is adopted (sizes cannot be compared)",
     files(f("cam/a.heic", size=5)), {}, listing(img("i9", "/cam", "a.png", size=900)), TREE,
     {"adopts": ["cam/a.heic"]}),
    ("a HEIC pair remembered in the rows is unchanged",
     files(f("cam/a.heic")), rows(row("cam/a.heic", "i1", name="a.png")),
     listing(img("i1", "/cam", "a.png", size=900)), TREE, {"unchanged": 1}),
    ("a HEIC file and a PNG of its stem: the exact name wins",
     files(f("a.heic"), f("a.png")), {}, listing(), TREE,
     {"upload": [("a.png", "/", None, None, False)], "failures": [("a.heic", False)]}),
    ("by class, two files landing on one name: the first wins",
     files(f("cats/x/a.jpg"), f("cats/y/a.jpg")), {}, listing(), BY_CLASS,
     {"upload": [("cats/x/a.jpg", "/cats", None, None, False)],
      "failures": [("cats/y/a.jpg", False)]}),
    ("a deleted file is kept on the service without --delete",
     {}, rows(row("x.jpg", "i1")), listing(img("i1", "/", "x.jpg")), TREE, {"kept": ["x.jpg"]}),
    ("a deleted file is archived with --delete",
     {}, rows(row("x.jpg", "i1")), listing(img("i1", "/", "x.jpg")), DELETE,
     {"archives": ["x.jpg"]}),
    ("more deletions than --max-delete are refused as a whole",
     {}, rows(row("a.jpg", "i1"), row("b.jpg", "i2"), row("c.jpg", "i3")),
     listing(img("i1", "/", "a.jpg"), img("i2", "/", "b.jpg"), img("i3", "/", "c.jpg")),
     DELETE, {"kept": ["a.jpg", "b.jpg", "c.jpg"], "refused": True}),
    ("--force lets them through",
     {}, rows(row("a.jpg", "i1"), row("b.jpg", "i2"), row("c.jpg", "i3")),
     listing(img("i1", "/", "a.jpg"), img("i2", "/", "b.jpg"), img("i3", "/", "c.jpg")),
     Policy(Destination("/"), delete=True, max_delete=2, force=True),
     {"archives": ["a.jpg", "b.jpg", "c.jpg"]}),
    ("a row whose file and image are both gone is forgotten",
     {}, rows(row("x.jpg", "i1")), listing(), DELETE, {"forgets": ["x.jpg"]}),
    ("a moved file (same name, same bytes) needs its hash first",
     files(f("b/x.jpg")), rows(row("a/x.jpg", "i1")), listing(img("i1", "/a", "x.jpg")), TREE,
     {"hash_first": ["b/x.jpg"]}),
    ("a moved file becomes a server-side move",
     files(f("b/x.jpg", sha="s1")), rows(row("a/x.jpg", "i1")),
     listing(img("i1", "/a", "x.jpg")), DELETE, {"moves": [("a/x.jpg", "b/x.jpg", "/b")]}),
    ("a renamed file is uploaded under the new name and the old image archived",
     files(f("a/y.jpg", sha="s1")), rows(row("a/x.jpg", "i1")),
     listing(img("i1", "/a", "x.jpg")), TREE,
     {"upload": [("a/y.jpg", "/a", None, "a/x.jpg", True)]}),
    ("a new file of the same size but other bytes is no move",
     files(f("b/x.jpg", sha="other")), rows(row("a/x.jpg", "i1")),
     listing(img("i1", "/a", "x.jpg")), DELETE,
     {"upload": [("b/x.jpg", "/b", None, None, False)], "archives": ["a/x.jpg"]}),
    ("by class, a move inside a class keeps the image and changes the local path",
     files(f("cats/b/x.jpg", sha="s1")), rows(row("cats/a/x.jpg", "i1", folder="/cats")),
     listing(img("i1", "/cats", "x.jpg")), BY_CLASS,
     {"relinks": [("cats/a/x.jpg", "cats/b/x.jpg")]}),
    ("by class, new bytes at a vanished file's name replace its image",
     files(f("cats/b/x.jpg", size=7)), rows(row("cats/a/x.jpg", "i1", folder="/cats")),
     listing(img("i1", "/cats", "x.jpg")), BY_CLASS,
     {"upload": [("cats/b/x.jpg", "/cats", "i1", "cats/a/x.jpg", False)]}),
    ("a move onto a taken name is judged as a new file; the old row stays",
     files(f("b/x.jpg", sha="s1")), rows(row("a/x.jpg", "i1")),
     listing(img("i1", "/a", "x.jpg"), img("i7", "/b", "x.jpg")), TREE,
     {"adopts": ["b/x.jpg"], "kept": ["a/x.jpg"]}),
]


@pytest.mark.parametrize("local, state, remote, policy, expected",
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_reconcile_plan(local: dict, state: dict, remote: dict, policy: Policy,
                        expected: dict) -> None:
    assert summary(plan_sync(local, state, policy, remote=remote)) == expected


def test_a_path_with_a_live_upload_is_left_to_the_queue() -> None:
    plan = plan_sync(files(f("x.jpg", size=9)), rows(row("x.jpg", "i1")), TREE,
                     remote=listing(img("i1", "/", "x.jpg")), pending={"x.jpg"})
    assert summary(plan) == {"in_flight": 1}


def test_a_rename_in_flight_keeps_its_old_row_out_of_the_plan() -> None:
    state = rows(row("a.jpg", "i1", superseded=True))
    plan = plan_sync({}, state, DELETE, remote=listing(img("i1", "/", "a.jpg")))
    assert summary(plan) == {}


def test_a_known_failure_is_reported_again_and_not_retried_until_the_file_changes() -> None:
    known = {"x.jpg": Known(100, 1, "not an image")}
    same = plan_sync(files(f("x.jpg")), {}, TREE, remote=listing(), known=known)
    assert summary(same) == {"failures": [("x.jpg", True)]}
    changed = plan_sync(files(f("x.jpg", mtime=2)), {}, TREE, remote=listing(), known=known)
    assert summary(changed) == {"upload": [("x.jpg", "/", None, None, False)]}


def test_while_watching_rows_are_trusted_and_scope_limits_the_plan() -> None:
    state = rows(row("a.jpg", "i1"), row("b.jpg", "i2"))
    # b.jpg is out of scope: its absence from ``local`` means nothing
    plan = plan_sync(files(f("a.jpg", size=5), f("c.jpg")), state, DELETE,
                     scope={"a.jpg", "c.jpg"})
    assert summary(plan) == {"upload": [("a.jpg", "/", "i1", None, False),
                                        ("c.jpg", "/", None, None, False)]}


def test_while_watching_a_new_file_on_a_name_another_file_owns_is_a_collision() -> None:
    state = rows(row("cats/a/x.jpg", "i1", folder="/cats"))
    plan = plan_sync(files(f("cats/b/x.jpg", sha="zz")), state, BY_CLASS,
                     scope={"cats/b/x.jpg"})
    assert summary(plan) == {"failures": [("cats/b/x.jpg", False)]}


def test_while_watching_a_directory_move_becomes_server_side_moves() -> None:
    state = rows(row("a/1.jpg", "i1", sha="h1"), row("a/2.jpg", "i2", sha="h2"))
    local = files(f("b/1.jpg", sha="h1"), f("b/2.jpg", sha="h2"))
    plan = plan_sync(local, state, DELETE, scope={"a/1.jpg", "a/2.jpg", "b/1.jpg",
                                                  "b/2.jpg"})
    assert summary(plan) == {"moves": [("a/1.jpg", "b/1.jpg", "/b"),
                                       ("a/2.jpg", "b/2.jpg", "/b")]}


def test_a_moved_file_pairs_with_the_row_of_the_same_name_first() -> None:
    state = rows(row("a/x.jpg", "i1"), row("a/y.jpg", "i2"))  # identical bytes
    plan = plan_sync(files(f("b/y.jpg", sha="s1")), state, TREE,
                     remote=listing(img("i1", "/a", "x.jpg"), img("i2", "/a", "y.jpg")))
    assert summary(plan) == {"moves": [("a/y.jpg", "b/y.jpg", "/b")], "kept": ["a/x.jpg"]}


# ---------------------------------------------------------------------- coalescing


def ev(kind: str, path: str, dest: str | None = None) -> Event:
    return Event(kind, path, dest)


COALESCE = [
    # (id, timed events, now, close_write, expected files settled)
    ("a burst of writes ending in a close settles once, settle after the close",
     [(0.0, ev("created", "x.jpg")), (0.1, ev("modified", "x.jpg")),
      (0.5, ev("modified", "x.jpg")), (0.6, ev("closed", "x.jpg"))], 2.6, True, ["x.jpg"]),
    ("... but not before",
     [(0.0, ev("created", "x.jpg")), (0.6, ev("closed", "x.jpg"))], 2.5, True, []),
    ("a writer pausing longer than settle with the file open keeps waiting (inotify)",
     [(0.0, ev("created", "x.jpg")), (0.1, ev("modified", "x.jpg"))], 60.0, True, []),
    ("without close events, quiet for settle is enough (polling)",
     [(0.0, ev("created", "x.jpg")), (0.1, ev("modified", "x.jpg"))], 2.1, False, ["x.jpg"]),
    ("polling: a change during the settle time pushes it back",
     [(0.0, ev("modified", "x.jpg")), (1.5, ev("modified", "x.jpg"))], 3.0, False, []),
    ("a file moved in (no writes) needs no close",
     [(0.0, ev("created", "x.jpg"))], 2.0, True, ["x.jpg"]),
    ("temp-then-rename: both ends settle together",
     [(0.0, ev("created", ".x.jpg.tmp")), (0.1, ev("modified", ".x.jpg.tmp")),
      (0.2, ev("closed", ".x.jpg.tmp")), (0.3, ev("moved", ".x.jpg.tmp", "x.jpg"))],
     2.3, True, [".x.jpg.tmp", "x.jpg"]),
    ("attribute changes do not count as writes",
     [(0.0, ev("closed", "x.jpg")), (0.5, ev("attrib", "x.jpg"))], 2.5, True, ["x.jpg"]),
    ("deletions settle together, settle after the last one",
     [(0.0, ev("deleted", "a.jpg")), (1.5, ev("deleted", "b.jpg"))], 3.0, True, []),
    ("... then all at once",
     [(0.0, ev("deleted", "a.jpg")), (1.5, ev("deleted", "b.jpg"))], 3.5, True,
     ["a.jpg", "b.jpg"]),
    ("a move waits for its destination to be closed",
     [(0.0, ev("modified", "a.jpg")), (0.1, ev("moved", "a.jpg", "b.jpg"))], 9.0, True, []),
    ("a chain of moves settles as one group",
     [(0.0, ev("moved", "a.jpg", "b.jpg")), (0.5, ev("moved", "b.jpg", "c.jpg"))], 2.5, True,
     ["a.jpg", "b.jpg", "c.jpg"]),
]


@pytest.mark.parametrize("events, now, close_write, expected",
                         [c[1:] for c in COALESCE], ids=[c[0] for c in COALESCE])
def test_coalesce(events: list, now: float, close_write: bool, expected: list[str]) -> None:
    settled, _ = coalesce(events, now, settle=2.0, close_write=close_write)
    assert list(settled.files) == expected


def test_folder_events_settle_as_folders() -> None:
    events = [(0.0, ev("dir_created", "new")), (0.0, ev("created", "new/a.jpg")),
              (0.1, ev("dir_deleted", "old")), (0.2, ev("dir_moved", "p", "q"))]
    settled, coalescer = coalesce(events, 2.2, settle=2.0)
    assert settled == Settled(files=("new/a.jpg",), folders=("new", "old", "p", "q"))
    assert len(coalescer) == 0


def test_a_path_settles_once_per_burst_and_again_after_new_events() -> None:
    coalescer = Coalescer(settle=1.0)
    coalescer.add(ev("created", "x.jpg"), 0.0)
    coalescer.add(ev("closed", "x.jpg"), 0.2)
    assert coalescer.next_due() == pytest.approx(1.2)
    assert coalescer.due(1.0) == Settled()
    assert coalescer.due(1.2).files == ("x.jpg",)
    assert coalescer.due(5.0) == Settled() and not coalescer.tracking("x.jpg")
    coalescer.add(ev("modified", "x.jpg"), 6.0)
    assert coalescer.next_due() is None  # open for writing: waiting is no use
    coalescer.add(ev("closed", "x.jpg"), 6.5)
    assert coalescer.due(7.5).files == ("x.jpg",)


def test_events_are_checked() -> None:
    with pytest.raises(ValueError):
        Event("opened", "x.jpg")
    with pytest.raises(ValueError):
        Event("moved", "x.jpg")
