"""The service side of the mirror's start-up comparison: every image under the target folder.

One folders call (all the dataset's folders), then each folder under the target listed the
way the mount lists a folder (``core.listing.list_images_consistent``: pages of 1,000, exact
``directory_path``, de-duplicated, listed again when the pages did not add up), several
folders at a time. Costs 1 + Σ ⌈images/1000⌉ calls and no per-image call.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

from pictofs.core.tree.listing import list_images_consistent
from pictofs.mirror.plan import RemoteListing
from pictofs.model import Image
from pictofs.names import normalize_folder
from pictofs.remote import Remote

log = logging.getLogger(__name__)


def under(path: str, folder: str) -> bool:
    return folder == "/" or path == folder or path.startswith(folder + "/")


def list_tree(remote: Remote, dataset_id: str, folder: str, workers: int = 8
              ) -> tuple[RemoteListing, bool]:
    """(folder, filename) → image for every image in ``folder`` and below, and whether every
    folder's listing added up."""
    paths = {folder}
    for found in remote.list_folders(dataset_id, None):
        path = normalize_folder(found.full_path)
        if under(path, folder):
            paths.add(path)
    listing: dict[tuple[str, str], Image] = {}
    complete = True
    with ThreadPoolExecutor(max(1, min(workers, len(paths)))) as pool:
        for images, consistent in pool.map(
                lambda path: list_images_consistent(remote, dataset_id, path), sorted(paths)):
            complete = complete and consistent
            for image in images.values():
                key = (image.directory_path, image.filename)
                if key not in listing or (image.created_at or "") > (
                        listing[key].created_at or ""):
                    listing[key] = image
    if not complete:
        log.info("the listing of %s changed while it was read; images missing from it are "
                 "adopted at upload time", folder)
    log.debug("listed %d images in %d folders under %s", len(listing), len(paths), folder)
    return listing, complete
