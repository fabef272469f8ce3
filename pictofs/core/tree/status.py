"""What ``pictofs status`` says of the tree: the counters of reads and opens, the open
files, each dataset's cache and the uploads of all of them together. Pure: ``Vfs`` reads
its counters under its lock and hands them in.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Iterable


@dataclass
class Counters:
    opens: int = 0
    reads: int = 0
    bytes_read: int = 0
    started: float = field(default_factory=time.time)


def mount_status(datasets: Iterable[Any], counters: Counters, open_files: int
                 ) -> dict[str, Any]:
    """The tree's part of ``pictofs status`` (``DatasetTree`` items in ``datasets``)."""
    datasets = list(datasets)
    cache = [(d.view.dataset.name, d.downloader.cache.stats()) for d in datasets]
    local = [d.writes.local_status() for d in datasets]
    return {
        "open_files": open_files,
        "opens": counters.opens,
        "reads": counters.reads,
        "bytes_read": counters.bytes_read,
        "cache": [{**dataclasses.asdict(c), "hit_ratio": c.hit_ratio, "dataset": name}
                  for name, c in cache],
        "uploads": merge_upload_status([d.writes.status() for d in datasets]),
        # files kept on this machine only (filesystem §5 "Names that stay local")
        "local_only": {key: sum(s[key] for s in local) for key in ("files", "bytes")},
        # names from the service the mount cannot show (filesystem §1), each counted once
        "skipped_names": sum(d.view.names.skipped() + d.archive.names.skipped()
                             for d in datasets),
        # entries of the desktop trash (.Trash-UID/files), their images archived
        "trashed": sum(d.trash.count() for d in datasets if d.trash is not None),
    }


def merge_upload_status(items: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {"pending": 0, "in_flight": 0, "failed": [], "bytes_uploaded": 0,
                              "upload_rate": 0.0, "paused": False, "kept_aside": [],
                              "stranded": [], "workers": 0}
    for item in items:
        merged["kept_aside"] += item.get("kept_aside", [])
        merged["stranded"] += item.get("stranded", [])
        merged["pending"] += item["pending"]
        merged["in_flight"] += item["in_flight"]
        merged["failed"] += item["failed"]
        merged["bytes_uploaded"] += item["bytes_uploaded"]
        merged["upload_rate"] += item["upload_rate"]
        merged["paused"] = merged["paused"] or item["paused"]
        merged["workers"] += item["workers"]  # upload worker threads running
    return merged
