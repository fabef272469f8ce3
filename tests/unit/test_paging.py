"""``wire.iter_pages``: the one paging loop of the client's listings."""

from __future__ import annotations

from dataclasses import dataclass

from pictofs.api.wire import iter_pages
from pictofs.model import Page


@dataclass(frozen=True)
class Item:
    id: str


def pages(*chunks: list[str], more_after_last: bool = False):
    asked: list[int] = []

    def fetch(offset: int) -> Page[Item]:
        asked.append(offset)
        index = len(asked) - 1
        if index >= len(chunks):
            return Page(items=[], has_more=False)
        last = index == len(chunks) - 1
        return Page(items=[Item(x) for x in chunks[index]], offset=offset,
                    has_more=more_after_last or not last)

    return fetch, asked


def test_offsets_advance_by_the_items_received_and_stop_at_has_more_false() -> None:
    fetch, asked = pages(["a", "b"], ["c"], ["d", "e"])
    assert [i.id for i in iter_pages(fetch)] == ["a", "b", "c", "d", "e"]
    assert asked == [0, 2, 3]


def test_an_item_seen_twice_is_yielded_once() -> None:
    fetch, _ = pages(["a", "b"], ["b", "c"])
    assert [i.id for i in iter_pages(fetch)] == ["a", "b", "c"]


def test_an_empty_page_ends_the_walk_even_when_more_is_announced() -> None:
    fetch, asked = pages(["a"], more_after_last=True)
    assert [i.id for i in iter_pages(fetch)] == ["a"]
    assert asked == [0, 1]


def test_nothing_is_asked_before_the_first_item_is_wanted() -> None:
    fetch, asked = pages(["a"])
    walk = iter_pages(fetch)
    assert asked == []
    assert next(walk).id == "a"
