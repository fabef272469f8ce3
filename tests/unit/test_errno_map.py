"""Every domain error has an errno (filesystem §7), and anything else becomes ``EIO``.

The domain errors are found by walking the subclasses of ``PictofsError`` defined in
``pictofs.errors``, so a new error class without a table entry fails here rather than
reaching a FUSE callback as a logged ``EIO``.
"""

from __future__ import annotations

import errno
import logging
from typing import Iterator

import pytest

from pictofs import errors
from pictofs.api import errors as api_errors
from pictofs.fs.errno_map import ERRNO_TABLE, errno_for


def _subclasses(cls: type) -> Iterator[type]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


DOMAIN_ERRORS = sorted({cls for cls in _subclasses(errors.PictofsError)
                        if cls.__module__ == errors.__name__}, key=lambda c: c.__name__)


def test_the_walk_finds_the_domain_errors() -> None:
    names = {cls.__name__ for cls in DOMAIN_ERRORS}
    assert {"NotFound", "NameTooLong", "CutShort", "BadHandle"} <= names
    assert len(DOMAIN_ERRORS) >= 20


@pytest.mark.parametrize("cls", DOMAIN_ERRORS, ids=lambda c: c.__name__)
def test_every_domain_error_maps_to_an_errno(cls: type) -> None:
    code = errno_for(cls("x"))
    assert code is not None, f"{cls.__name__} has no entry in errno_map.ERRNO_TABLE"
    assert code in errno.errorcode


@pytest.mark.parametrize("cls, code", [
    (errors.NotFound, errno.ENOENT), (errors.AlreadyExists, errno.EEXIST),
    (errors.NotEmpty, errno.ENOTEMPTY), (errors.Unsupported, errno.ENOTSUP),
    (errors.NotAnImage, errno.EINVAL), (errors.TooLarge, errno.EFBIG),
    (errors.PermissionDenied, errno.EACCES), (errors.ReadOnly, errno.EROFS),
    (errors.NoSpace, errno.ENOSPC), (errors.NotPermitted, errno.EPERM),
    (errors.CrossDevice, errno.EXDEV), (errors.InvalidArgument, errno.EINVAL),
    (errors.ValueTooLarge, errno.E2BIG), (errors.NoAttribute, errno.ENODATA),
    (errors.NameTooLong, errno.ENAMETOOLONG), (errors.InvalidName, errno.EINVAL),
    (errors.Unavailable, errno.EIO), (errors.CutShort, errno.EIO),
    (errors.ConfigError, errno.EIO),
])
def test_the_errnos_of_the_spec_table(cls: type, code: int) -> None:
    assert errno_for(cls("x")) == code


def test_api_errors_map_like_their_domain_parent() -> None:
    assert errno_for(api_errors.NotFoundError(404, "not_found", "gone")) == errno.ENOENT
    assert errno_for(api_errors.ConflictError(409, "conflict", "taken")) == errno.EEXIST
    assert errno_for(api_errors.NetworkError("down")) == errno.EIO


def test_the_table_holds_only_domain_errors() -> None:
    assert all(issubclass(cls, errors.PictofsError) for cls in ERRNO_TABLE)


@pytest.mark.parametrize("exc", [RuntimeError("bug"), KeyError("k"), ValueError("v"),
                                 errors.PictofsError("no entry")],
                         ids=lambda e: type(e).__name__)
def test_unknown_exceptions_have_no_entry_and_become_eio_in_the_adapter(
        exc: Exception, caplog: pytest.LogCaptureFixture) -> None:
    assert errno_for(exc) is None
    try:
        from pictofs.fs.fuselib import FuseOSError
        from pictofs.fs.operations import translated
    except errors.ConfigError as missing:  # no libfuse 3 on this machine
        pytest.skip(str(missing))

    class Adapter:
        @translated
        def getattr(self, path: str) -> None:
            raise exc

    with caplog.at_level(logging.ERROR, logger="pictofs.fs.operations"):
        with pytest.raises(FuseOSError) as info:
            Adapter().getattr("/x")  # type: ignore[arg-type]
    assert info.value.errno == errno.EIO
    assert caplog.records, "an error without an errno is logged"
