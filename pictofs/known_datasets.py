"""Datasets this machine has mounted, remembered per service (filesystem §8): when the
service is unreachable at ``pictofs mount``, a dataset mounted before is mounted from its
remembered id, with its journal and cache, instead of failing.

Stored in ``$XDG_STATE_HOME/pictofs/known-datasets.json`` (0600):
``{"<base url>": {"<dataset name>": <Dataset JSON>}}``, written atomically.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from pictofs import dirs
from pictofs.model import Dataset

log = logging.getLogger(__name__)


def _path() -> Path:
    return dirs.state_dir() / "known-datasets.json"


def _load() -> dict[str, Any]:
    try:
        data = json.loads(_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def get(base_url: str, name: str) -> Dataset | None:
    entry = _load().get(base_url.rstrip("/"), {}).get(name)
    if not isinstance(entry, dict):
        return None
    try:
        return Dataset.from_json(entry)
    except TypeError:
        return None


def put(base_url: str, dataset: Dataset) -> None:
    data = _load()
    data.setdefault(base_url.rstrip("/"), {})[dataset.name] = dataset.to_json()
    dirs.private_dir(dirs.state_dir())
    try:
        dirs.replace_private(_path(), json.dumps(data))
    except OSError as exc:
        log.warning("could not remember dataset %s: %s", dataset.name, exc.strerror)
