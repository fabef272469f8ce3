"""Server profiles: the reference server's own behaviour, or the hosted service's.

``pictofs serve`` answers as the protocol page's reference server by default. ``--profile
hosted`` makes it answer where the hosted Pictograph service is known to differ (the
protocol page and the official SDK's models), so that the mount, the mirror and the client
are tested against both. Each difference is one field of ``Profile``, named for what it
changes; ``docs/server.md`` lists them with the reasons:

- ``conflict_status``: a duplicate name answers 409 (reference) or 400 with "already
  exists" in the message (hosted);
- ``me_route``: ``GET /me`` exists, or answers 404 as any unknown route does;
- ``storage_apart``: signed upload URLs point at the storage listener's own host and port
  (not at the host the client used for the API), and the storage listener refuses any
  request that carries an API key;
- ``bytes_by_redirect``: image bytes are answered with a 307 to a signed storage URL, to be
  fetched without the key;
- ``sdk_fields_only``: answers carry only what the official SDK declares or reads: the
  pagination block is ``{"has_more"}`` alone, upload-url answers carry ``upload_url`` alone
  (per file), and folder reads use the legacy keys ``project_id``/``full_path`` while folder
  create and rename answer ``dataset_id``/``directory_path`` (the SDK's ``Directory`` notes
  both shapes).

Both profiles have no ``Range`` support, no ETag and no checksums in answers, and both
rename a batch move's clash to ``x-1.jpg`` (counted in ``renamed``): those are the hosted
service's behaviours the reference server already shares.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pictofs.server.failures import ApiFailure


@dataclass(frozen=True)
class Profile:
    name: str
    conflict_status: int = 409
    me_route: bool = True
    storage_apart: bool = False
    bytes_by_redirect: bool = False
    sdk_fields_only: bool = False

    def failure(self, failure: ApiFailure) -> ApiFailure:
        """A refusal as this profile words it: a name collision is 400 on the hosted
        service, with the same message (it always says "already exists")."""
        if failure.status == 409 and self.conflict_status != 409:
            return ApiFailure(self.conflict_status, "bad_request", failure.message,
                              failure.details)
        return failure

    def pagination(self, block: dict[str, Any]) -> dict[str, Any]:
        """The pagination block of a list answer."""
        if self.sdk_fields_only:
            return {"has_more": block["has_more"]}
        return block

    def upload_ticket(self, ticket: dict[str, Any]) -> dict[str, Any]:
        """One upload-url answer (or one entry of a bulk one)."""
        if self.sdk_fields_only:
            return {"upload_url": ticket["upload_url"]}
        return ticket

    def folder_read(self, folder: dict[str, Any]) -> dict[str, Any]:
        """A folder in a folder list answer: the legacy ``project_id`` key on the hosted
        service."""
        if not self.sdk_fields_only:
            return folder
        return {("project_id" if k == "dataset_id" else k): v for k, v in folder.items()}

    def folder_written(self, folder: dict[str, Any]) -> dict[str, Any]:
        """The folder a create or rename answers: ``directory_path`` instead of
        ``full_path`` on the hosted service."""
        if not self.sdk_fields_only:
            return folder
        return {("directory_path" if k == "full_path" else k): v for k, v in folder.items()}


REFERENCE = Profile("reference")
HOSTED = Profile("hosted", conflict_status=400, me_route=False, storage_apart=True,
                 bytes_by_redirect=True, sdk_fields_only=True)
PROFILES = {p.name: p for p in (REFERENCE, HOSTED)}


def profile_named(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown server profile {name!r}; profiles: "
                         f"{', '.join(PROFILES)}") from None
