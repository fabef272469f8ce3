"""Client-side name rules (protocol §3, filesystem §5)."""

import pytest

from pictofs.errors import InvalidName, NameTooLong, Unsupported
from pictofs.names import (check_name, check_supported, content_type_for,
                           is_image_on_its_way, is_local_only, is_supported, is_transient,
                           is_transient_path, normalize_folder, stored_as)


@pytest.mark.parametrize("name", ["x.jpg", "ümlaut.png", "a b.JPG", "." * 3 + ".gif",
                                  "é" * 125 + ".png"])
def test_valid_names(name):
    check_name(name)


@pytest.mark.parametrize("name, error", [
    ("", InvalidName), (".", InvalidName), ("..", InvalidName), ("a/b.jpg", InvalidName),
    ("a\x00.jpg", InvalidName), ("a\n.jpg", InvalidName), ("a\x7f.jpg", InvalidName),
    ("x" * 252 + ".jpg", NameTooLong), ("é" * 128, NameTooLong),
])
def test_invalid_names(name, error):
    with pytest.raises(error):
        check_name(name)


def test_name_of_exactly_255_bytes_is_valid():
    check_name("x" * 251 + ".jpg")


@pytest.mark.parametrize("name, supported", [
    ("a.jpg", True), ("a.JPEG", True), ("a.png", True), ("a.webp", True), ("a.bmp", True),
    ("a.tif", True), ("a.TIFF", True), ("a.gif", True), ("a.heic", True),
    ("notes.txt", False), ("report.pdf", False), ("jpg", False), ("a.jpg.part", False),
])
def test_supported(name, supported):
    assert is_supported(name) is supported


def test_check_supported_names_the_extensions():
    with pytest.raises(Unsupported, match=r"\.jpg .*\.heic"):
        check_supported("notes.txt")


@pytest.mark.parametrize("name, local", [
    (".x.jpg.AbC123", True), (".goutputstream-XYZ", True), (".DS_Store", True),
    (".Trash-1000", True), ("x.jpg~", True), ("x.jpg.part", True), ("y.crdownload", True),
    ("a.tmp", True), ("a.swp", True), ("a.swx", True), ("a.kate-swp", True),
    ("Thumbs.db", True), ("desktop.ini", True),
    ("x.jpg", False), ("4913", False), ("notes.txt", False), ("part.jpg", False),
])
def test_local_only(name, local):
    assert is_local_only(name) is local


@pytest.mark.parametrize("name, transient, image_on_its_way", [
    (".x.jpg.AbC123", True, True), (".IMG_0001.xmp.z9Y8x7", True, False),
    (".notes.txt.000000", True, False), ("x.jpg.part", True, False), ("a.swp", True, False),
    ("y.crdownload", True, False), ("a.tmp", True, False), ("a.kate-swp", True, False),
    (".DS_Store", False, False), ("Thumbs.db", False, False), ("IMG_0001.xmp", False, False),
    ("notes.txt", False, False), ("x.jpg~", False, False), (".x.jpg.AbC12", False, False),
    ("x.jpg.AbC123", False, False),
])
def test_transient_names(name, transient, image_on_its_way):
    """Transient local names are removed when left over; kept ones stay until rm."""
    assert is_transient(name) is transient
    assert is_image_on_its_way(name) is image_on_its_way


@pytest.mark.parametrize("path, transient", [
    ("/cars/.x.jpg.AbC123", True), ("/.Trash-0", True), ("/.Trash-1000/info/x.trashinfo", True),
    ("/a/.Trash/files/x.txt", True), ("/cars/IMG_0001.xmp", False), ("/.thumbnails/a.jpg", False),
    ("/.Trash-me/x.txt", False), ("/", False),
])
def test_transient_paths(path, transient):
    assert is_transient_path(path) is transient


@pytest.mark.parametrize("name, ctype", [("a.jpg", "image/jpeg"), ("a.JPEG", "image/jpeg"),
                                         ("a.tif", "image/tiff"), ("a.heic", "image/heic")])
def test_content_type(name, ctype):
    assert content_type_for(name) == ctype


@pytest.mark.parametrize("path, expected", [("", "/"), ("/", "/"), ("cars/", "/cars"),
                                            ("/cars//red/", "/cars/red")])
def test_normalize_folder(path, expected):
    assert normalize_folder(path) == expected


@pytest.mark.parametrize("path", ["/a/../b", "/./a", "/a\x00b"])
def test_normalize_folder_rejects(path):
    with pytest.raises(InvalidName):
        normalize_folder(path)


@pytest.mark.parametrize("name, stored", [("x.jpg", "x.jpg"), ("IMG_1.heic", "IMG_1.png"),
                                          ("a.HEIC", "a.png"), ("h.heic.jpg", "h.heic.jpg"),
                                          ("heic", "heic")])
def test_stored_as(name, stored):
    assert stored_as(name) == stored
