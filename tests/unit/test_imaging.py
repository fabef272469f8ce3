"""imaging: header-only dimensions with EXIF orientation, and "is this an image?"."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from pictofs import imaging
from pictofs.errors import NotAnImage


def encode(fmt: str, size: tuple[int, int] = (40, 30), orientation: int | None = None) -> bytes:
    image = Image.new("RGB", size, (10, 120, 200))
    out = io.BytesIO()
    if orientation is None:
        image.save(out, format=fmt)
    else:
        exif = Image.Exif()
        exif[imaging.ORIENTATION_TAG] = orientation
        image.save(out, format=fmt, exif=exif.tobytes())
    return out.getvalue()


def heic_bytes(size: tuple[int, int] = (40, 30)) -> bytes:
    imaging._register_plugins()
    out = io.BytesIO()
    Image.new("RGB", size, (1, 2, 3)).save(out, format="HEIF")
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF"])
def test_probe_reads_dimensions_of_every_supported_format(fmt: str) -> None:
    assert imaging.probe(encode(fmt)) == (40, 30)


def test_probe_reads_heic_headers() -> None:
    assert imaging.probe(heic_bytes((64, 48))) == (64, 48)
    assert imaging.identify(heic_bytes()) == "HEIF"


@pytest.mark.parametrize(
    "fmt, orientation, expected",
    [
        ("JPEG", 1, (40, 30)),
        ("JPEG", 3, (40, 30)),  # rotated 180°: same shape
        ("JPEG", 5, (30, 40)),
        ("JPEG", 6, (30, 40)),
        ("JPEG", 7, (30, 40)),
        ("JPEG", 8, (30, 40)),
        ("WEBP", 6, (30, 40)),
        ("TIFF", 8, (30, 40)),
        ("PNG", 6, (30, 40)),  # PNG with an eXIf chunk before the pixels
    ],
)
def test_probe_applies_exif_orientation(fmt: str, orientation: int,
                                        expected: tuple[int, int]) -> None:
    assert imaging.probe(encode(fmt, orientation=orientation)) == expected


def test_probe_needs_only_the_header() -> None:
    data = encode("JPEG", size=(1600, 1200), orientation=6)
    header = data[:data.index(b"\xff\xda") + 16]  # up to the first scan: no pixels
    with pytest.raises(OSError):
        Image.open(io.BytesIO(header)).load()
    assert imaging.probe(header) == (1200, 1600)


def test_probe_takes_paths_and_file_objects(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    path.write_bytes(encode("PNG"))
    assert imaging.probe(path) == (40, 30)
    assert imaging.probe(str(path)) == (40, 30)
    with open(path, "rb") as handle:
        handle.seek(5)
        imaging.probe(handle)  # starts mid-file: whatever it says, the position is kept
        assert handle.tell() == 5
        handle.seek(0)
        assert imaging.probe(handle) == (40, 30)
        assert handle.tell() == 0


@pytest.mark.parametrize("data", [b"", b"hello, not an image", b"\x89PNG\r\n", b"\xff\xd8\xff"])
def test_probe_returns_none_when_it_cannot_tell(data: bytes) -> None:
    assert imaging.probe(data) is None


def test_probe_of_a_missing_file_is_none(tmp_path: Path) -> None:
    assert imaging.probe(tmp_path / "missing.jpg") is None


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF"])
def test_identify_names_the_format(fmt: str) -> None:
    assert imaging.identify(encode(fmt)) == fmt
    assert imaging.is_image(encode(fmt))


@pytest.mark.parametrize("data", [b"", b"just some text\n" * 10, b"%PDF-1.7\n"])
def test_identify_refuses_non_images(data: bytes) -> None:
    with pytest.raises(NotAnImage):
        imaging.identify(data)
    assert not imaging.is_image(data)


def test_identify_leaves_a_file_object_where_it_was(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("these are notes, not a JPEG")
    with open(path, "rb") as handle:
        with pytest.raises(NotAnImage):
            imaging.identify(handle)
        assert handle.tell() == 0


def test_describe_head_reads_the_whole_file_only_for_a_header_past_the_first_bytes() -> None:
    """The mount's flush hands Pillow the first ``HEAD_BYTES`` of the file (one read); a
    header longer than that (a large text chunk before a PNG's pixels) is read from the
    whole file, and bytes that are not an image within a short file never are."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("notes", "x" * (imaging.HEAD_BYTES + 1000))
    out = io.BytesIO()
    Image.new("RGB", (40, 30)).save(out, format="PNG", pnginfo=info)
    data = out.getvalue()
    head = data[:imaging.HEAD_BYTES]
    with pytest.raises(NotAnImage):
        imaging.describe(head)  # the header runs past the first bytes
    assert imaging.describe_head(head, len(data), data) == ("PNG", (40, 30))
    small = encode("JPEG")
    assert imaging.describe_head(small, len(small), b"never read") == ("JPEG", (40, 30))

    class Unread(io.BytesIO):
        def tell(self) -> int:
            raise AssertionError("the whole file was read for a short non-image")

    with pytest.raises(NotAnImage):
        imaging.describe_head(b"just some text\n", 15, Unread())
