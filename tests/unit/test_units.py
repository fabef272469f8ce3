"""The one parser for sizes and durations."""

import pytest

from pictofs.units import format_size, parse_duration, parse_size


@pytest.mark.parametrize("text, expected", [
    ("0", 0), ("1048576", 1048576), ("64K", 64 << 10), ("500M", 500 << 20),
    ("10G", 10 << 30), ("10g", 10 << 30), ("10GiB", 10 << 30), ("10GB", 10 << 30),
    ("1T", 1 << 40), ("1.5G", int(1.5 * (1 << 30))), (" 2M ", 2 << 20), (7, 7),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "G", "10X", "-1G", "1e3", "ten"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


@pytest.mark.parametrize("text, expected", [
    ("2", 2.0), ("2s", 2.0), ("500ms", 0.5), ("5m", 300.0), ("1h", 3600.0), ("1d", 86400.0),
    ("0.25", 0.25), ("0", 0.0), (3, 3.0), (1.5, 1.5),
])
def test_parse_duration(text, expected):
    assert parse_duration(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "s", "2x", "-2s", "2 minutes"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize("n, text", [(0, "0"), (1023, "1023"), (1536, "1.5K"),
                                     (10 << 30, "10.0G")])
def test_format_size(n, text):
    assert format_size(n) == text
