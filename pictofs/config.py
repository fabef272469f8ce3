"""Every option once, and where the connection settings come from.

``OPTIONS`` is the single table of command-line options: name, type, default, environment
variable, help, and the commands that take it. ``add_options`` builds argparse flags from it,
``docs/options.md`` is generated from it (``python -m pictofs.optionsdoc``), and a test checks
the two agree. ``resolve_connection`` applies the precedence of the protocol (§1): explicit
argument or key file > ``PICTOGRAPH_*`` environment > ``~/.pictograph/config.toml`` > defaults.
"""

from __future__ import annotations

import argparse
import os
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pictofs.errors import ConfigError
from pictofs.units import parse_duration, parse_size

DEFAULT_BASE_URL = "https://api.pictograph.io"
ENV_KEY = "PICTOGRAPH_API_KEY"
ENV_BASE_URL = "PICTOGRAPH_BASE_URL"


def _mode(text: str) -> int:
    return int(text, 8)


def _count(text: str) -> int:
    """A whole number, 0 or more."""
    value = int(text)
    if value < 0:
        raise ValueError(f"{text} is negative")
    return value


@dataclass(frozen=True)
class Option:
    """One command-line option. ``commands`` names the subcommands that accept it."""

    name: str  # the long flag without dashes, e.g. "cache-size"
    help: str
    commands: tuple[str, ...]
    default: Any = None
    type: Callable[[str], Any] | None = str
    env: str | None = None
    short: str | None = None
    flag: bool = False  # a switch: present → True
    metavar: str | None = None

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")


MOUNT = ("mount",)
MOUNT_MIRROR = ("mount", "mirror")
CONNECT = ("mount", "mirror", "datasets")

OPTIONS: tuple[Option, ...] = (
    # connection
    Option("base-url", "Pictograph API base URL", CONNECT, env=ENV_BASE_URL, metavar="URL"),
    Option("key-file", "read the API key from this file (must not be readable by others)",
           CONNECT, metavar="FILE"),
    # cache and listing
    Option("cache-dir", "where downloaded images are cached (default $XDG_CACHE_HOME/pictofs)",
           MOUNT, metavar="DIR"),
    Option("cache-size", "cap of the image cache", MOUNT, default="10G", type=parse_size,
           metavar="SIZE"),
    Option("dir-cache-time", "how long listings are kept before asking the service again",
           MOUNT, default="30s", type=parse_duration, metavar="DURATION"),
    Option("prefetch", "images downloaded ahead of a program reading a folder's images in "
           "name order, deepened up to 8 (16 on a distant service) while it waits on the "
           "network; a folder read in an order of its own is swept once 16 were read "
           "(0: none)", MOUNT, default="1", type=_count, metavar="N"),
    Option("listing-cache-images", "listed images kept in memory across the mount's "
           "folder listings (each some 700 bytes); past it the least recently used folders "
           "are listed again when next used", MOUNT, default="100000", type=_count,
           metavar="N"),
    # permissions
    Option("read-only", "mount read-only", MOUNT, default=False, flag=True, type=None),
    Option("allow-other", "let other users use the mount (implies default_permissions)",
           MOUNT, default=False, flag=True, type=None),
    Option("uid", "owner shown for files (default: the mounting user)", MOUNT, type=int),
    Option("gid", "group shown for files (default: the mounting user's group)", MOUNT, type=int),
    Option("file-mode", "permission bits of files (octal)", MOUNT, default="0644", type=_mode,
           metavar="MODE"),
    Option("dir-mode", "permission bits of directories (octal)", MOUNT, default="0755",
           type=_mode, metavar="MODE"),
    Option("umask", "umask applied to file and directory modes (octal)", MOUNT, type=_mode,
           metavar="MASK"),
    # network
    Option("timeout", "read timeout of a request without a byte; also how long mount start-up "
           "retries an unreachable service", MOUNT_MIRROR, default="30s", type=parse_duration,
           metavar="DURATION"),
    Option("retries", "extra attempts for a failed request (upload steps are retried by the "
           "queue, without limit)", MOUNT_MIRROR, default="3", type=int, metavar="N"),
    Option("retry-max-wait", "longest wait between attempts", MOUNT_MIRROR, default="30s",
           type=parse_duration, metavar="DURATION"),
    # writing
    Option("write-back", "delay after the last close before a new file is uploaded", MOUNT,
           default="2s", type=parse_duration, metavar="DURATION"),
    Option("commit-interval", "longest time a closed file waits before it is made durable "
           "against a crash of the machine (0: at every close; fsync, pictofs sync and "
           "unmount do it at once)", MOUNT, default="5s", type=parse_duration,
           metavar="DURATION"),
    Option("transfers", "uploads in parallel", MOUNT_MIRROR, default="16", type=int,
           metavar="N"),
    Option("min-free-space", "writes fail with ENOSPC below this much free space on the "
           "staging disk", MOUNT, default="1G", type=parse_size, metavar="SIZE"),
    Option("local-only-max", "files kept on this machine only (non-images, hidden files) "
           "may take this much; writes past it fail with ENOSPC", MOUNT, default="1G",
           type=parse_size, metavar="SIZE"),
    Option("refuse-non-images", "refuse names the service does not take (ENOTSUP) instead "
           "of keeping them on this machine only", MOUNT, default=False, flag=True,
           type=None),
    Option("permanent-delete", "rm deletes images permanently instead of archiving them",
           MOUNT, default=False, flag=True, type=None),
    # mount(8)'s form of the options above (translated by ``pictofs.fstab``, anywhere on
    # the line, before argparse sees it: ``pictofs.cli.mount_options_anywhere``)
    Option("options", "mount options as mount(8) takes them, anywhere on the line: each is "
           "the option of that name with _ for - (ro is --read-only), e.g. -o "
           "ro,cache_size=5G", MOUNT, short="o", metavar="OPTION[,OPTION...]"),
    # process
    Option("foreground", "stay attached and log to stderr", MOUNT, default=False, flag=True,
           type=None, short="f"),
    Option("log-file", "log here (default: syslog when in the background)", MOUNT_MIRROR,
           metavar="FILE"),
    Option("verbose", "more detail in logs and errors", ("mount", "mirror", "datasets", "serve",
           "umount", "sync", "status", "refresh"), default=False, flag=True, type=None,
           short="v"),
    Option("timeout", "how long to wait for pending uploads and for the daemon to exit",
           ("umount",), default="5m", type=parse_duration, metavar="DURATION"),
    Option("timeout", "how long to wait for pending uploads (default: as long as it takes)",
           ("sync",), type=parse_duration, metavar="DURATION"),
    Option("json", "print every field of the status as one JSON object (for scripts)",
           ("status",), default=False, flag=True, type=None),
    # mirror
    Option("once", "reconcile once, print the report and exit", ("mirror",), default=False,
           flag=True, type=None),
    Option("delete", "archive images whose local file was deleted", ("mirror",), default=False,
           flag=True, type=None),
    Option("max-delete", "refuse to archive more than this many in one go without --force",
           ("mirror",), default="100", type=int, metavar="N"),
    Option("force", "override --max-delete (mirror) or unmount with uploads pending (umount)",
           ("mirror", "umount"), default=False, flag=True, type=None),
    Option("settle", "quiet time after the last change before a file is uploaded", ("mirror",),
           default="2s", type=parse_duration, metavar="DURATION"),
    Option("organize-by-class", "map only the first level of subfolders to virtual folders",
           ("mirror",), default=False, flag=True, type=None),
    Option("poll", "use the polling observer instead of inotify", ("mirror",), default=False,
           flag=True, type=None),
    # server
    Option("data", "server data folder (default $XDG_DATA_HOME/pictofs/server)", ("serve",),
           metavar="DIR"),
    Option("host", "address to listen on (anything but loopback must be asked for)",
           ("serve",), default="127.0.0.1", metavar="ADDR"),
    Option("port", "port to listen on (0 picks a free one)", ("serve",), default="8790",
           type=int, metavar="PORT"),
    Option("storage-port", "serve signed storage uploads on a second port", ("serve",),
           type=int, metavar="PORT"),
    Option("profile", "answer as the reference server (reference) or as the hosted service "
           "is known to (hosted)", ("serve",), default="reference", metavar="NAME"),
    Option("storage-host", "with --profile hosted: the storage listener's address (default "
           "127.0.0.2 beside IPv4 loopback)", ("serve",), metavar="ADDR"),
    Option("create-org", "create an organization and exit", ("serve",), metavar="NAME"),
    Option("create-key", "print a new API key with this role and exit", ("serve",),
           metavar="ROLE"),
    Option("org", "organization for --create-key (default: the first) or --list-keys "
           "(default: all)", ("serve",), metavar="NAME"),
    Option("list-keys", "list the API keys (id, role, prefix, created, revoked) and exit",
           ("serve",), default=False, flag=True, type=None),
    Option("revoke-key", "revoke the API key with this id and exit", ("serve",), metavar="ID"),
    Option("stop", "stop the running embedded server and exit", ("serve",), default=False,
           flag=True, type=None),
)


def options_for(command: str) -> list[Option]:
    return [o for o in OPTIONS if command in o.commands]


def add_options(parser: argparse.ArgumentParser, command: str) -> None:
    """Add every option of ``command`` to ``parser``; defaults stay raw strings so that
    ``finish_options`` parses them once, with the environment in between."""
    for opt in options_for(command):
        flags = [f"--{opt.name}"] + ([f"-{opt.short}"] if opt.short else [])
        if opt.flag:
            parser.add_argument(*flags, dest=opt.dest, action="store_true", help=opt.help)
        else:
            help_text = opt.help + (f" (default: {opt.default})" if opt.default is not None else "")
            if opt.env:
                help_text += f" [env {opt.env}]"
            parser.add_argument(*flags, dest=opt.dest, default=None, metavar=opt.metavar,
                                help=help_text)


def finish_options(args: argparse.Namespace, command: str) -> argparse.Namespace:
    """Fill defaults (argument > environment > table default) and parse typed values.
    Raises ConfigError naming the option on a bad value."""
    for opt in options_for(command):
        if opt.flag:
            continue
        raw = getattr(args, opt.dest, None)
        if raw is None and opt.env:
            raw = os.environ.get(opt.env) or None
        if raw is None:
            raw = opt.default
        if raw is not None and opt.type is not None and isinstance(raw, str):
            try:
                raw = opt.type(raw)
            except ValueError as exc:
                raise ConfigError(f"--{opt.name}: {exc}") from None
        setattr(args, opt.dest, raw)
    return args


# ---------------------------------------------------------------- connection settings


@dataclass(frozen=True)
class Connection:
    """Where to talk and with which key. ``repr`` never shows the key."""

    base_url: str
    api_key: str | None
    key_source: str  # "argument", "key file …", "environment", "config file", "none"

    def __repr__(self) -> str:
        return f"Connection(base_url={self.base_url!r}, key_source={self.key_source!r})"

    @property
    def has_key(self) -> bool:
        return bool(self.api_key)


def home_dir() -> Path:
    """The user's home folder, from the password database when ``HOME`` is unset (mount(8)
    strips it from helpers' environment)."""
    home = os.environ.get("HOME")
    if home:
        return Path(home)
    import pwd

    return Path(pwd.getpwuid(os.getuid()).pw_dir)


def config_file() -> Path:
    return home_dir() / ".pictograph" / "config.toml"


def _check_private(path: Path, what: str, info: os.stat_result | None = None) -> None:
    """Refuse a file holding a key that group or others can read, as ssh does."""
    mode = (info or path.stat()).st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{what} {path} is readable by others (mode {stat.S_IMODE(mode):04o}); "
            f"run: chmod 600 {path}"
        )


def read_key_file(path: str | os.PathLike[str]) -> str:
    """Read a key file: one key on its first non-empty line. Refuses a file that group or
    others can read, as ssh does."""
    p = Path(path)
    try:
        info = p.stat()
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read key file {p}: {exc.strerror}") from None
    _check_private(p, "key file", info)
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    raise ConfigError(f"key file {p} is empty")


def _read_config_toml() -> dict[str, Any]:
    path = config_file()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    section = data.get("default", {})
    return section if isinstance(section, dict) else {}


def resolve_connection(
    base_url: str | None = None,
    api_key: str | None = None,
    key_file: str | os.PathLike[str] | None = None,
) -> Connection:
    """Apply the precedence of protocol §1 for the key and the base URL separately."""
    file_settings: dict[str, Any] | None = None

    def from_file() -> dict[str, Any]:
        nonlocal file_settings
        if file_settings is None:
            file_settings = _read_config_toml()
        return file_settings

    if api_key:
        key, source = api_key, "argument"
    elif key_file:
        key, source = read_key_file(key_file), f"key file {key_file}"
    elif os.environ.get(ENV_KEY):
        key, source = os.environ[ENV_KEY].strip(), "environment"
    elif from_file().get("api_key"):
        _check_private(config_file(), "config file")
        key, source = str(from_file()["api_key"]).strip(), f"config file {config_file()}"
    else:
        key, source = None, "none"

    url = (
        base_url
        or os.environ.get(ENV_BASE_URL)
        or from_file().get("base_url")
        or DEFAULT_BASE_URL
    )
    return Connection(base_url=str(url).rstrip("/"), api_key=key, key_source=source)
