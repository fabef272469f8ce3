"""The Python examples of docs/python-api.md, run as written against the reference server.

Every fenced ``python`` block runs in order in one namespace (the second example uses the
first one's ``client``), in a temporary working folder holding the files the examples name
(``photo.jpg``, ``./photos``), with the key and base URL in the environment as a user
would set them. The test then checks what the examples did on the server.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from imagegen import jpeg_bytes, png_bytes
from pictofs.errors import NotFound

DOC = Path(__file__).resolve().parents[2] / "docs" / "python-api.md"
DATASET = "my-dataset"  # the name the examples use


def python_blocks(markdown: str) -> list[str]:
    """The fenced ``python`` code blocks of a Markdown text, in order."""
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.S | re.M)


def test_python_blocks_are_found():
    blocks = python_blocks("text\n```python\nx = 1\n```\n```sh\nls\n```\n```python\ny = 2\n```\n")
    assert blocks == ["x = 1\n", "y = 2\n"]


def test_python_api_examples_run(server, client, tmp_path,  # type: ignore[no-untyped-def]
                                  monkeypatch, capsys):
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) >= 2, "docs/python-api.md lost its examples"
    monkeypatch.setenv("PICTOGRAPH_API_KEY", server.key)
    monkeypatch.setenv("PICTOGRAPH_BASE_URL", server.base_url)
    monkeypatch.chdir(tmp_path)
    try:
        dataset = client.projects.get(DATASET)
    except NotFound:
        dataset = client.projects.create(DATASET)
    photo = jpeg_bytes(11, size=(40, 30))
    Path("photo.jpg").write_bytes(photo)
    for relative, data in {"photos/cats/c1.jpg": jpeg_bytes(1), "photos/cats/c2.jpg": jpeg_bytes(2),
                           "photos/dogs/d1.png": png_bytes(3)}.items():
        Path(relative).parent.mkdir(parents=True, exist_ok=True)
        Path(relative).write_bytes(data)

    namespace: dict[str, object] = {"__name__": "__doc_example__"}
    for number, block in enumerate(blocks, 1):
        try:
            exec(compile(block, f"{DOC.name} example {number}", "exec"), namespace)
        except Exception as exc:  # name the example in the failure
            pytest.fail(f"example {number} of {DOC.name} failed: {exc!r}\n{block}")
    out = capsys.readouterr().out

    # first example: upload, download, list, archive
    image = namespace["image"]
    assert f"{image.id} 40 30" in out  # type: ignore[attr-defined]
    assert Path("copy.jpg").read_bytes() == photo
    assert f"photo.jpg {len(photo)}" in out
    assert client.images.get(image.id).is_archived  # type: ignore[attr-defined]
    # second example: one virtual folder per class
    report = namespace["report"]
    assert (report.images_attempted, report.images_uploaded) == (3, 3)  # type: ignore[attr-defined]
    assert sorted(i.filename for i in client.images.list(dataset.id, folder_path="/cats")) == \
        ["c1.jpg", "c2.jpg"]
    assert [i.filename for i in client.images.list(dataset.id, folder_path="/dogs")] == \
        ["d1.png"]
