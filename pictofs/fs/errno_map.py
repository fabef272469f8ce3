"""Domain error → errno, in one table (filesystem §7).

``errno_for`` walks the exception's class hierarchy, so an API error that subclasses a domain
error (``NotFoundError`` is a ``NotFound``) maps like its domain parent. Anything not in the
table is a bug: ``EIO`` with the traceback in the log, never fusepy's default ``EINVAL``.
"""

from __future__ import annotations

import errno

from pictofs import errors

ERRNO_TABLE: dict[type[BaseException], int] = {
    errors.NotFound: errno.ENOENT,
    errors.AlreadyExists: errno.EEXIST,
    errors.PermissionDenied: errno.EACCES,
    errors.TooLarge: errno.EFBIG,
    errors.Unsupported: errno.ENOTSUP,
    errors.NotAnImage: errno.EINVAL,
    errors.NotEmpty: errno.ENOTEMPTY,
    errors.NoSpace: errno.ENOSPC,
    errors.ReadOnly: errno.EROFS,
    errors.NotPermitted: errno.EPERM,
    errors.CrossDevice: errno.EXDEV,
    errors.InvalidArgument: errno.EINVAL,
    errors.ValueTooLarge: errno.E2BIG,
    errors.NoAttribute: errno.ENODATA,
    errors.NameTooLong: errno.ENAMETOOLONG,
    errors.InvalidName: errno.EINVAL,
    errors.Unavailable: errno.EIO,
    errors.NotADirectory: errno.ENOTDIR,
    errors.IsADirectory: errno.EISDIR,
    errors.BadHandle: errno.EBADF,
    # a setting that stops a call (the upload journal cannot be opened, ...): the message
    # goes to the log, the program gets EIO (§7's "anything unexpected")
    errors.ConfigError: errno.EIO,
}


def errno_for(exc: BaseException) -> int | None:
    """The errno for a domain error, or None when the error is not in the table."""
    for cls in type(exc).__mro__:
        if cls in ERRNO_TABLE:
            return ERRNO_TABLE[cls]
    return None
