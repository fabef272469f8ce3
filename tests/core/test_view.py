"""When a name in a folder not listed yet is answered by one ``filename=`` question and when
by the folder's listing (filesystem §3), counted against a scripted service."""

from __future__ import annotations

from collections import Counter

import pytest

from pictofs.core.tree.view import LOOKUPS_BEFORE_LISTING, DatasetView, DirEntry, FileEntry
from pictofs.errors import NotFound
from pictofs.model import Dataset, Folder, Image, Page


class Service:
    """A dataset of folders with images, counting the calls each route gets."""

    def __init__(self, folders: dict[str, int]) -> None:
        # folder path → number of images named img0.png, img1.png, ...
        self.images = {path: [Image(id=f"{path}-{i}", dataset_id="d", filename=f"img{i}.png",
                                    directory_path=path, file_size=10,
                                    created_at="2026-01-01T00:00:00Z")
                              for i in range(count)]
                       for path, count in folders.items()}
        self.calls: Counter[str] = Counter()

    def list_images_page(self, dataset_id: str, folder: str, *, offset: int = 0,
                         limit: int = 1000, include_archived: bool = False) -> Page[Image]:
        self.calls["page"] += 1
        rows = self.images.get(folder, [])
        return Page(items=rows[offset:offset + limit], limit=limit, offset=offset,
                    total=len(rows), has_more=offset + limit < len(rows))

    def find_image(self, dataset_id: str, folder: str, filename: str) -> Image | None:
        self.calls["filename"] += 1
        return next((i for i in self.images.get(folder, []) if i.filename == filename), None)

    def list_folders(self, dataset_id: str, parent: str | None) -> list[Folder]:
        self.calls["folders"] += 1
        prefix = "/" if parent in ("/", None) else parent + "/"
        return [Folder(id="f" + path, dataset_id="d", name=path[len(prefix):], full_path=path,
                       image_count=len(rows))
                for path, rows in self.images.items()
                if path.startswith(prefix) and "/" not in path[len(prefix):] and path != "/"]


def view_of(service: Service) -> DatasetView:
    return DatasetView(service, Dataset(id="d", name="ds"), dir_cache_time=60,  # type: ignore
                       clock=lambda: 0.0)


def test_a_name_in_a_folder_of_one_page_is_answered_by_its_listing():
    service = Service({"/": 0, "/small": 1000})
    view = view_of(service)
    assert isinstance(view.resolve("/small"), DirEntry)
    service.calls.clear()
    assert isinstance(view.resolve("/small/img7.png"), FileEntry)
    assert service.calls == {"page": 1, "folders": 1}
    # every other name of the folder, present or not, from that listing
    for name in ("img8.png", "img999.png"):
        assert isinstance(view.resolve(f"/small/{name}"), FileEntry)
    with pytest.raises(NotFound):
        view.resolve("/small/new.png")
    assert service.calls == {"page": 1, "folders": 1}


def test_a_big_folder_is_listed_after_a_few_names_asked_one_by_one():
    service = Service({"/": 0, "/big": 1001})
    view = view_of(service)
    view.resolve("/big")
    service.calls.clear()
    for i in range(LOOKUPS_BEFORE_LISTING - 1):
        assert isinstance(view.resolve(f"/big/img{i}.png"), FileEntry)
        view.resolve(f"/big/img{i}.png")  # answered from the lookup cache: not counted
    assert service.calls == {"filename": LOOKUPS_BEFORE_LISTING - 1}
    for i in range(LOOKUPS_BEFORE_LISTING - 1, 50):
        assert isinstance(view.resolve(f"/big/img{i}.png"), FileEntry)
    with pytest.raises(NotFound):
        view.resolve("/big/none.png")
    assert service.calls == {"filename": LOOKUPS_BEFORE_LISTING - 1, "page": 2, "folders": 1}


def test_names_in_the_root_are_asked_one_by_one_until_the_rule_lists_it():
    service = Service({"/": 5})
    view = view_of(service)
    assert isinstance(view.resolve("/img0.png"), FileEntry)
    assert service.calls == {"filename": 1}  # the root has no image count to go by
    for i in range(1, 5):
        view.resolve(f"/img{i}.png")
    assert service.calls == {"filename": LOOKUPS_BEFORE_LISTING - 1, "page": 1, "folders": 1}


class DeepService(Service):
    """One chain of folders ``/a/a/…/a``, ``depth`` levels deep, each holding nothing else."""

    def __init__(self, depth: int) -> None:
        super().__init__({})
        self.depth = depth

    def list_folders(self, dataset_id: str, parent: str | None) -> list[Folder]:
        self.calls["folders"] += 1
        level = 0 if parent in ("/", None) else parent.count("/")
        if level >= self.depth:
            return []
        path = ("" if level == 0 else parent) + "/a"  # type: ignore[operator]
        return [Folder(id=f"f{level + 1}", dataset_id="d", name="a", full_path=path)]


def test_a_path_deeper_than_the_recursion_limit_is_walked_level_by_level():
    depth = 1500
    view = view_of(DeepService(depth))
    deepest = "/a" * depth
    found = view.resolve(deepest)
    assert isinstance(found, DirEntry) and found.folder is not None
    assert found.folder.full_path == deepest
    with pytest.raises(NotFound):
        view.resolve(deepest + "/a")
