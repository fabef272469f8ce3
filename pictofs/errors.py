"""Domain errors: what went wrong, in the words of the core, with no errno and no HTTP.

Every layer raises these (or subclasses of them). The API client's typed errors
(``pictofs.api.errors``) subclass them too, so the core catches ``NotFound`` whether it came
from the service or from a local check; ``pictofs.fs.errno_map`` turns them into errno in
one table.
"""

from __future__ import annotations


class PictofsError(Exception):
    """Base of every error pictofs raises on purpose (anything else is a bug)."""


class NotFound(PictofsError):
    """No such image, folder or dataset (or it belongs to another organization)."""


class AlreadyExists(PictofsError):
    """The name is taken in that folder."""


class NotEmpty(PictofsError):
    """A folder that still holds images or folders."""


class Unsupported(PictofsError):
    """A name whose extension the service does not take, or an operation it cannot do."""


class InvalidName(PictofsError):
    """A name that breaks the name rules (slash, NUL, control characters, ``.``/``..``)."""


class NameTooLong(InvalidName):
    """A name over 255 bytes of UTF-8."""


class NotAnImage(PictofsError):
    """Bytes that Pillow cannot identify as an image."""


class TooLarge(PictofsError):
    """Over the 50 MB limit of the service."""


class PermissionDenied(PictofsError):
    """The key is rejected (401) or its role is too low (403)."""


class ReadOnly(PictofsError):
    """A write on a read-only mount."""


class NoSpace(PictofsError):
    """The staging disk would go below ``--min-free-space``, or the state disk is full (a
    staging write, an fsync or a journal commit found no room)."""


class Unavailable(PictofsError):
    """The service cannot be reached (network down, circuit breaker open)."""


class CutShort(Unavailable):
    """The service answered but its answer was cut short (a truncated body): worth another
    try like ``Unavailable``, but no sign that the service is unreachable, so it does not
    trip the circuit breaker."""


class ConfigError(PictofsError):
    """Bad configuration: an option, a key file readable by others, a missing setting."""


class NotPermitted(PictofsError):
    """An operation the filesystem never allows (links, changing a read-only attribute)."""


class NoAttribute(PictofsError):
    """No such extended attribute."""


class ValueTooLarge(PictofsError):
    """An extended attribute value over 64 KiB."""


class CrossDevice(PictofsError):
    """A rename across datasets."""


class InvalidArgument(PictofsError):
    """Flags or arguments the operation does not take (``RENAME_EXCHANGE``, ...)."""


class NotADirectory(PictofsError):
    """A path goes through, or asks for a listing of, something that is not a folder."""


class IsADirectory(PictofsError):
    """A file operation on a folder."""


class BadHandle(PictofsError):
    """A file handle the filesystem does not know (closed, or never opened)."""
