"""``client.images.list``: pages of 1000, offsets advanced by what arrived, de-duplicated,
also while the listing changes under it."""

from __future__ import annotations

import dataclasses
import itertools
import uuid

import pytest
from clientkit import bulk_fill

from pictofs.api import batch


@pytest.fixture(scope="module")
def big(client_module, server):  # type: ignore[no-untyped-def]
    dataset = client_module.projects.create(f"big-{uuid.uuid4().hex[:8]}")
    images = bulk_fill(client_module.transport, dataset.id, 2500)
    return dataset, images


@pytest.fixture(scope="module")
def client_module(server):  # type: ignore[no-untyped-def]
    from pictofs.api import Client

    with Client(api_key=server.key, base_url=server.base_url) as c:
        yield c


def test_pagination_across_2500_images(client, server, big) -> None:
    dataset, images = big
    before = server.calls("GET", "/api/v1/developer/images/")
    listed = list(client.images.list(dataset.id))
    assert len(listed) == 2500
    assert {i.id for i in listed} == {i.id for i in images}
    assert len({i.id for i in listed}) == 2500
    pages = server.calls("GET", "/api/v1/developer/images/") - before
    assert pages == 3  # 1000 + 1000 + 500
    created = [i.created_at for i in listed]
    assert created == sorted(created, reverse=True)


def test_listing_stays_unique_while_images_are_added(client) -> None:
    dataset = client.projects.create(f"growing-{uuid.uuid4().hex[:8]}")
    original = {i.id for i in bulk_fill(client.transport, dataset.id, 1500, prefix="old")}
    iterator = client.images.list(dataset.id)
    seen = [i.id for i in itertools.islice(iterator, 1000)]  # the whole first page
    added = {i.id for i in bulk_fill(client.transport, dataset.id, 300, prefix="new", seed=5000)}
    seen += [i.id for i in iterator]
    # newest first: the 300 new ones push 300 already seen into the next page
    assert len(seen) == len(set(seen))
    assert original <= set(seen)
    assert set(seen) <= original | added


def test_listing_stays_unique_while_images_are_archived(client) -> None:
    dataset = client.projects.create(f"shrinking-{uuid.uuid4().hex[:8]}")
    images = bulk_fill(client.transport, dataset.id, 1500)
    iterator = client.images.list(dataset.id)
    seen = [i.id for i in itertools.islice(iterator, 900)]
    archived = [i.id for i in images[:200]]  # the oldest: still ahead of the iterator
    result = batch.delete(client.transport, dataset.id, archived)
    assert result.processed == 200 and result.operation == "archived"
    seen += [i.id for i in iterator]
    assert len(seen) == len(set(seen))
    assert set(seen) <= {i.id for i in images}


def test_listing_with_archived_images(client) -> None:
    dataset = client.projects.create(f"archive-{uuid.uuid4().hex[:8]}")
    images = bulk_fill(client.transport, dataset.id, 30)
    batch.delete(client.transport, dataset.id, [i.id for i in images[:10]])
    assert len(list(client.images.list(dataset.id))) == 20
    everything = list(client.images.list(dataset.id, include_archived=True))
    assert len(everything) == 30
    assert sum(i.is_archived for i in everything) == 10


def test_the_mounts_listing_pages_keep_everything_but_the_urls(client, server) -> None:
    """``ApiRemote.list_images_page`` (a mount's listing) parses each image without its URLs,
    which a mount never uses and which were a large part of a listed image's memory; every
    other field is the client's."""
    from pictofs.api.remote import ApiRemote
    from pictofs.config import Connection

    dataset = client.projects.create(f"lean-{uuid.uuid4().hex[:8]}")
    bulk_fill(client.transport, dataset.id, 3)
    full = {i.id: i for i in client.images.list(dataset.id)}
    assert all(i.image_url for i in full.values())
    remote = ApiRemote(Connection(server.base_url, server.key, "argument"))
    try:
        lean = remote.list_images_page(dataset.id, "/").items
    finally:
        remote.close()
    assert len(lean) == 3
    for image in lean:
        assert (image.image_url, image.thumbnail_url, image.annotation_url) == (None, None, None)
        assert dataclasses.replace(full[image.id], image_url=None, thumbnail_url=None,
                                   annotation_url=None) == image
