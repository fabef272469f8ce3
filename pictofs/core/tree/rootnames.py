"""The names at a dataset's root that differ between the mount and the service (filesystem §6,
"A service folder named .archive").

In the mount, ``.archive`` at a dataset's root is the virtual archive (``archive.py``). A real
folder the service has under that name shows as ``.archive~service`` instead; and so that no
name of the service hides another, a root name of the service that is already ``.archive``
followed by one or more ``~service`` gets one more: the mount's ``.archive~service~service``
is the service's ``.archive~service``, and so on. Every other name, and every name below the
root, is the same on both sides. The top of ``.archive/`` lays the dataset out again and
uses the same names. These are the only names translated, in both directions, here: ``Vfs``
translates a path when it routes it into a dataset (``to_service``) and back where it tells
a mount path (``to_mount``); the root folder's nodes name their rows (``name_to_mount``).

A service name reached only through this translation (``is_translated``) is a folder of the
service, not a name made through the mount: the local-only rule of dot-names (filesystem §5)
does not apply to it. Pure.
"""

from __future__ import annotations

ARCHIVE_NAME = ".archive"
SUFFIX = "~service"
SERVICE_ARCHIVE = ARCHIVE_NAME + SUFFIX  # what the service's own .archive is called in the mount


def _suffixes(name: str) -> int | None:
    """How many ``~service`` follow ``.archive`` in ``name``; None if it is not one of them."""
    if not name.startswith(ARCHIVE_NAME):
        return None
    rest = name[len(ARCHIVE_NAME):]
    count, remainder = divmod(len(rest), len(SUFFIX))
    if remainder or rest != SUFFIX * count:
        return None
    return count


def is_translated(service_name: str) -> bool:
    """A root name of the service that the mount shows under another name."""
    return _suffixes(service_name) is not None


def name_to_mount(service_name: str) -> str:
    """A root name of the service → its name in the mount."""
    return service_name + SUFFIX if is_translated(service_name) else service_name


def name_to_service(mount_name: str) -> str:
    """A root name in the mount → the service's (``.archive`` itself is the virtual archive,
    not a name of the service: the caller routes it there first)."""
    count = _suffixes(mount_name)
    return mount_name[:-len(SUFFIX)] if count else mount_name


def to_service(path: str) -> str:
    """A path inside a dataset in the mount (``/.archive~service/x.png``) → the service's
    (``/.archive/x.png``)."""
    name, sep, rest = path[1:].partition("/")
    return "/" + name_to_service(name) + sep + rest


def to_mount(path: str) -> str:
    """A path inside a dataset on the service → the mount's."""
    name, sep, rest = path[1:].partition("/")
    return "/" + name_to_mount(name) + sep + rest
