"""Logging set-up for every command: one format, stderr or a file or syslog.

The API key never reaches a log line: ``KeyRedactingFilter`` masks anything that looks like
a Pictograph key (``pk_live_…``/``pk_test_…``) as a last line of defence; the code itself
never logs keys. Log lines name datasets, folders and files, so a log file pictofs creates
is 0600 (an existing one keeps its mode).
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re

from pictofs.names import printable

_KEY_RE = re.compile(r"pk_(live|test)_[A-Za-z0-9_\-]+")


class KeyRedactingFilter(logging.Filter):
    """Masks keys, and escapes unprintable characters so that a name holding a newline
    cannot forge a log line and undecodable bytes cannot make the handler drop the line."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = printable(message)
        if "pk_" in clean:
            clean = _KEY_RE.sub(r"pk_\1_***", clean)
        if clean != message:
            record.msg = clean
            record.args = None
        return True


class PrivateFileHandler(logging.handlers.WatchedFileHandler):
    """A ``WatchedFileHandler`` (reopens a file logrotate moved) whose file, whenever it
    creates one, is created 0600 whatever the umask."""

    def _open(self):  # type: ignore[no-untyped-def]
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                     0o600)
        return open(fd, self.mode, encoding=self.encoding, errors=self.errors)


def setup_logging(verbose: bool = False, log_file: str | None = None,
                  syslog: bool = False, quiet: bool = False) -> logging.Handler:
    """Configure the root logger once; returns the handler (a WatchedFileHandler reopens a
    log file moved by logrotate). ``quiet``: warnings only (one-shot commands, whose result
    is their output); ``verbose``: everything."""
    handler: logging.Handler
    if log_file:
        handler = PrivateFileHandler(os.path.expanduser(log_file))
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    elif syslog and os.path.exists("/dev/log"):
        handler = logging.handlers.SysLogHandler(address="/dev/log")
        fmt = "pictofs[%(process)d]: %(levelname)s %(name)s: %(message)s"
    else:
        handler = logging.StreamHandler()
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s" if verbose else \
            "pictofs: %(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    handler.addFilter(KeyRedactingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    # mfusepy ("fuse") logs every errno it returns with a traceback at DEBUG: noise.
    for noisy in ("urllib3", "PIL", "watchdog", "uvicorn.access", "fuse"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return handler
