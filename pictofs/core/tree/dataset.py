"""One dataset in a mount: the parts ``Vfs`` and its nodes reach it through. Built by the
composition root (``mounting.DatasetTreeBuilder``) when the dataset is first reached; holds
no lock of its own (each part locks itself).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pictofs.core.tree.archive import ArchiveView
from pictofs.core.tree.readonly import ReadOnlyWrites
from pictofs.core.tree.view import DatasetView


@dataclass
class DatasetTree:
    """Everything of one dataset in the mount: its listings (``view``), reads through the
    cache (``downloader``), ``.archive/`` (``archive``) and, on a writable mount, the files
    being written and uploaded (``writes``), the folder and rename verbs (``renamer``) and
    the desktop trash (``trash``). A read-only mount has ``ReadOnlyWrites``, which refuses
    every change."""

    view: DatasetView
    downloader: Any  # pictofs.core.cache.downloads.Downloader
    archive: ArchiveView
    writes: Any = dataclasses.field(default_factory=ReadOnlyWrites)  # WriteLayer
    renamer: Any = None  # pictofs.core.tree.renames.Renamer (None: read-only)
    trash: Any = None  # pictofs.core.tree.trash.Trash: .Trash-UID/ (None: read-only)
