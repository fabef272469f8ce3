"""The extended-attribute verbs of ``Vfs`` (filesystem §2), kept apart from the rest of it.

``listxattr``/``getxattr`` answer ``user.pictograph.*`` from the image record of a listing
(``annotations`` asks the service); ``setxattr`` sets ``split`` and ``tags`` on an image, or
keeps them for a staged file until it is registered; ``security.*``/``system.*`` probes of
``cp -p`` are accepted and ignored. ``XattrVerbs`` is mixed into ``Vfs``, which provides
``remote``, ``_resolve`` and ``_writes``.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from pictofs.core.tree import attrs
from pictofs.core.tree.pending import Pending
from pictofs.core.tree.view import FileEntry
from pictofs.errors import InvalidArgument, NoAttribute, NotPermitted, ValueTooLarge
from pictofs.remote import Remote


class XattrVerbs:
    remote: Remote

    def _resolve(self, path: str) -> tuple[Any, Any]:
        raise NotImplementedError  # Vfs

    def _writes(self, side: Any, what: str) -> Any:
        raise NotImplementedError  # Vfs

    def listxattr(self, path: str) -> list[str]:
        _side, entry = self._resolve(path)
        if isinstance(entry, FileEntry):
            return attrs.xattr_names(entry.image)
        if isinstance(entry, Pending) and entry.error:
            return [attrs.ERROR_XATTR]
        return []

    def getxattr(self, path: str, name: str) -> bytes:
        _side, entry = self._resolve(path)
        if isinstance(entry, Pending):
            if name == attrs.ERROR_XATTR and entry.error:
                return entry.error.encode()
            raise NoAttribute(name)
        if not isinstance(entry, FileEntry):
            raise NoAttribute(name)
        if name == attrs.ANNOTATIONS_XATTR:
            value = json.dumps(self.remote.get_annotations(entry.image),
                               ensure_ascii=False).encode()
            if len(value) > attrs.MAX_XATTR_SIZE:
                raise ValueTooLarge(f"annotations of {path} are larger than 64 KiB")
            return value
        value = attrs.xattr_value(entry.image, name)
        if value is None:
            raise NoAttribute(name)
        return value

    def setxattr(self, path: str, name: str, value: bytes) -> None:
        if name.startswith(("security.", "system.")):
            return  # capability and ACL probes of cp -p: accepted and ignored
        side, entry = self._resolve(path)
        if isinstance(entry, Pending) and self._set_pending_attr(side, entry, name, value):
            return
        if isinstance(entry, Pending):  # it landed meanwhile: set it on the image
            side, entry = self._resolve(path)
        if not isinstance(entry, FileEntry) or not name.startswith(attrs.XATTR_PREFIX):
            raise NotPermitted(f"{name} cannot be set here")
        current = attrs.xattr_value(entry.image, name)
        if current is not None and current == value:
            return
        field_name = name[len(attrs.XATTR_PREFIX):]
        if field_name not in attrs.WRITABLE_XATTRS:
            raise NotPermitted(f"{name} is read-only")
        self._writes(side, "setxattr")
        assert side is not None
        image = entry.image
        try:
            if field_name == "split":
                updated = self.remote.set_split(image, attrs.parse_split(value))
            else:
                tags = attrs.parse_tags(value)
                self.remote.set_tags(image.dataset_id, image.id,
                                     [t for t in tags if t not in image.tags],
                                     [t for t in image.tags if t not in tags])
                updated = dataclasses.replace(image, tags=tuple(tags))
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        side.view.note_image(updated)

    def _set_pending_attr(self, side: Any, pending: Pending, name: str,
                          value: bytes) -> bool:
        """``split``/``tags`` on a staged file apply right after register (§2); False when
        the file landed before the value was kept."""
        field_name = name[len(attrs.XATTR_PREFIX):] if name.startswith(attrs.XATTR_PREFIX) \
            else ""
        if field_name not in attrs.WRITABLE_XATTRS:
            raise NotPermitted(f"{name} cannot be set on a file not uploaded yet")
        writes = self._writes(side, "setxattr")
        try:
            parsed: Any = attrs.parse_split(value) if field_name == "split" \
                else attrs.parse_tags(value)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        return writes.set_attr_after_register(pending, field_name, parsed)

    def removexattr(self, path: str, name: str) -> None:
        if name.startswith(("security.", "system.")):
            raise NoAttribute(name)
        raise NotPermitted(f"{name} cannot be removed")
