"""The only place that imports mfusepy, after pointing it at libfuse 3.

mfusepy picks its library when first imported and prefers libfuse 2 when both are installed;
pictofs supports libfuse 3 only, so ``FUSE_LIBRARY_NAME=fuse3`` is set before the import
(unless the user chose a library path explicitly).
"""

from __future__ import annotations

import os

from pictofs.errors import ConfigError

if not os.environ.get("FUSE_LIBRARY_PATH"):
    os.environ["FUSE_LIBRARY_NAME"] = "fuse3"

try:
    import mfusepy as fuse
except OSError as exc:  # no libfuse at all
    raise ConfigError("libfuse 3 is not installed: install the fuse3 package "
                      "(apt-get install fuse3)") from exc

if fuse.fuse_version_major != 3:
    raise ConfigError(f"libfuse 3 is required, found libfuse {fuse.fuse_version_major}; "
                      f"install the fuse3 package")

FUSE = fuse.FUSE
FuseOSError = fuse.FuseOSError
Operations = fuse.Operations

__all__ = ["FUSE", "FuseOSError", "Operations", "fuse"]
