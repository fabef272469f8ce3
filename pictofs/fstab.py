"""The mount(8) helper: ``mount -t fuse.pictofs SOURCE MOUNTPOINT -o OPTIONS`` and fstab
lines (``pictofs.mounting`` builds and runs the mount itself; ``pictofs.fs.fuse_session``
talks to the kernel).

mount(8) runs ``/sbin/mount.fuse.pictofs SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS]`` for type
``fuse.pictofs`` and ``/sbin/mount.pictofs`` for type ``pictofs``; both are console scripts
of ``pictofs.cli.mount_helper_main``. Without them, ``mount.fuse3`` runs ``pictofs SOURCE
MOUNTPOINT -o OPTIONS``, which ``pictofs.cli.main`` recognises. Either way the command line
calls ``run`` here with itself as the way to mount, so this module never imports
``pictofs.cli``. The same translation serves all three:

- ``SOURCE`` is a dataset name, or ``/`` for the organization (one directory per dataset).
  A dataset name never contains ``/``; any other source with one is a path mount(8) made
  from a name that matched a file in its working directory, and is refused.
- ``OPTIONS`` map to ``pictofs mount`` flags through the one options table: ``ro`` is
  ``--read-only``; ``name_with_underscores=value`` is ``--name-with-underscores value``; a
  switch (``allow_other``) takes no value. Generic mount options that mean nothing here
  (``rw``, ``nodev``, ``_netdev``, ``x-systemd.automount``, ...) are ignored. ``api_key=`` is
  refused: fstab and ``/proc/mounts`` are world-readable.
- mount(8) strips ``PATH`` and ``HOME`` from a helper's environment (``PICTOGRAPH_*`` and
  ``XDG_*`` pass). The helper runs in the interpreter it was installed with and takes the
  home folder from the password database.

``mount_arguments`` is the pure translation; ``run`` adds the environment and the exit codes
mount(8) expects (0 mounted, 1 bad invocation, 32 mount failure), and mounts through the
``pictofs`` entry point it is given.
"""

from __future__ import annotations

import grp
import os
import pwd
import sys
from dataclasses import dataclass, field
from typing import Callable, Sequence

from pictofs.config import Option, options_for
from pictofs.errors import ConfigError

ORGANIZATION_SOURCE = "/"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
EXIT_OK, EXIT_USAGE, EXIT_MOUNT_FAILED = 0, 1, 32  # mount(8)'s codes

# Options mount(8), fstab and mount.fuse3 add that say nothing to pictofs.
IGNORED_OPTIONS = frozenset({
    "rw", "dev", "nodev", "suid", "nosuid", "exec", "noexec", "atime", "noatime", "relatime",
    "strictatime", "nodiratime", "auto", "noauto", "nofail", "_netdev", "user", "users",
    "owner", "group", "defaults",
})
IGNORED_PREFIXES = ("x-",)

REFUSED_OPTIONS = {
    "api_key": "api_key= is refused: /etc/fstab and /proc/mounts are readable by every user. "
               "Put the key in a file only its owner can read (chmod 600) and pass "
               "key_file=/path/to/file, or set PICTOGRAPH_API_KEY in the environment",
    "foreground": "foreground cannot be used from mount(8), which waits for the helper to "
                  "return; run `pictofs mount --foreground` (or the systemd unit) instead",
}

# Options that are not ``pictofs mount`` options but have a meaning to mount(8).
ALIASES = {"ro": "read-only"}

_USAGE = ("usage: {prog} SOURCE MOUNTPOINT [-sfnv] [-o OPTION[,OPTION...]]\n"
          "SOURCE is a dataset name, or / for the organization")


class HelperUsageError(ConfigError):
    """The helper's command line has the wrong shape (not an option's fault)."""


@dataclass(frozen=True)
class HelperCall:
    """A helper invocation, translated: the ``pictofs`` arguments to run and the
    mount(8) switches that change how."""

    argv: list[str]  # starts with "mount"
    fake: bool = False  # -f: check everything, mount nothing
    verbose: bool = False
    warnings: list[str] = field(default_factory=list)


def split_options(text: str) -> list[str]:
    """Split a mount option string at commas outside double quotes, dropping the quotes
    (libmount writes ``key="a,b"`` for a value holding a comma)."""
    items: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            items.append("".join(current))
            current = []
        else:
            current.append(ch)
    if quoted:
        raise ConfigError(f"unbalanced double quote in mount options: {text!r}")
    items.append("".join(current))
    return [item for item in items if item]


def _mount_options() -> dict[str, Option]:
    # ``options`` is ``-o`` itself: not an option inside ``-o``
    return {opt.name: opt for opt in options_for("mount") if opt.name != "options"}


def _numeric_id(kind: str, value: str) -> str:
    """``uid=``/``gid=`` take a number or a user/group name, as other FUSE helpers do."""
    if value.isdigit():
        return value
    try:
        return str(pwd.getpwnam(value).pw_uid if kind == "uid" else grp.getgrnam(value).gr_gid)
    except KeyError:
        what = "user" if kind == "uid" else "group"
        raise ConfigError(f"{kind}={value}: no such {what}") from None


def translate_options(items: Sequence[str], sloppy: bool = False
                      ) -> tuple[list[str], list[str]]:
    """Mount options → (``pictofs mount`` flags, warnings). Unknown options are an error,
    or with ``sloppy`` (mount's ``-s``) a warning."""
    known = _mount_options()
    flags: list[str] = []
    warnings: list[str] = []
    for item in items:
        key, has_value, value = item.partition("=")
        if key in IGNORED_OPTIONS or key.startswith(IGNORED_PREFIXES):
            continue
        if key in REFUSED_OPTIONS:
            raise ConfigError(REFUSED_OPTIONS[key])
        name = ALIASES.get(key, key.replace("_", "-"))
        opt = known.get(name)
        if opt is None:
            message = (f"unknown mount option {key!r}; pictofs takes: ro, "
                       + ", ".join(o.dest for o in known.values() if o.dest != "foreground"))
            if not sloppy:
                raise ConfigError(message)
            warnings.append(message + " (ignored: -s)")
            continue
        if opt.flag:
            if has_value:
                raise ConfigError(f"mount option {key} takes no value (got {item!r})")
            flags.append(f"--{opt.name}")
            continue
        if not value:
            raise ConfigError(f"mount option {key} needs a value: {key}=…")
        if opt.name in ("uid", "gid"):
            value = _numeric_id(opt.name, value)
        if opt.type is not None:
            try:
                opt.type(value)
            except ValueError as exc:
                raise ConfigError(f"mount option {key}={value}: {exc}") from None
        flags += [f"--{opt.name}", value]
    return flags, warnings


def mount_arguments(argv: Sequence[str]) -> HelperCall:
    """Translate a helper's command line (``SOURCE MOUNTPOINT [-sfnv] [-o OPTS] [-t TYPE]``)
    into ``pictofs mount`` arguments. Pure apart from user/group name look-ups."""
    places: list[str] = []
    option_text: list[str] = []
    sloppy = fake = verbose = False
    words = list(argv)
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if word in ("-o", "-t", "-N"):
            if i >= len(words):
                raise HelperUsageError(f"{word} needs a value")
            value = words[i]
            i += 1
            if word == "-o":
                option_text.append(value)
            elif word == "-N":
                raise HelperUsageError("mounting in another namespace (-N) is not supported")
            continue  # -t: the type is ours by construction
        if word.startswith("-o") and len(word) > 2:
            option_text.append(word[2:])
            continue
        if word.startswith("-") and len(word) > 1:
            for letter in word[1:]:
                if letter == "s":
                    sloppy = True
                elif letter == "f":
                    fake = True
                elif letter == "v":
                    verbose = True
                elif letter != "n":  # -n: no mtab to write, nothing to do
                    raise HelperUsageError(f"unknown switch -{letter}")
            continue
        places.append(word)
    if len(places) != 2:
        raise HelperUsageError("expected SOURCE and MOUNTPOINT")
    source, mountpoint = places
    items = [item for text in option_text for item in split_options(text)]
    flags, warnings = translate_options(items, sloppy=sloppy)
    if source == ORGANIZATION_SOURCE:
        dataset: list[str] = []
    elif "/" in source:
        raise ConfigError(
            f"source {source!r} is a path, not a dataset name: mount(8) turns a name into a "
            f"path when a file of that name exists in its working directory. Run mount with "
            f"--no-canonicalize (-c) or from another directory; use / for the organization")
    else:
        dataset = [source]
    if verbose and "--verbose" not in flags:
        flags.append("--verbose")
    return HelperCall(["mount", *dataset, mountpoint, *flags], fake=fake, verbose=verbose,
                      warnings=warnings)


def prepare_environment(environ: dict[str, str] | os._Environ[str]) -> None:
    """Restore what mount(8) strips: ``HOME`` from the password database, a default
    ``PATH`` (for ``fusermount3``)."""
    if not environ.get("HOME"):
        environ["HOME"] = pwd.getpwuid(os.getuid()).pw_dir
    if not environ.get("PATH"):
        environ["PATH"] = DEFAULT_PATH


def run(argv: Sequence[str], prog: str, *, pictofs_main: Callable[[list[str]], int]) -> int:
    """Translate, then mount through ``pictofs_main(["mount", ...])`` (the command line's
    entry point: ``pictofs mount`` returns once the mount is ready and leaves the daemon in
    the background). Returns mount(8)'s exit code."""
    if any(word in ("-h", "--help") for word in argv):
        print(_USAGE.format(prog=prog))
        return EXIT_OK
    try:
        call = mount_arguments(argv)
    except HelperUsageError as exc:
        print(f"{prog}: {exc}\n{_USAGE.format(prog=prog)}", file=sys.stderr)
        return EXIT_USAGE
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for warning in call.warnings:
        print(f"{prog}: {warning}", file=sys.stderr)
    if call.verbose or call.fake:
        print(f"{prog}: pictofs {' '.join(call.argv)}", file=sys.stderr)
    if call.fake:
        return EXIT_OK
    prepare_environment(os.environ)
    code = pictofs_main(call.argv)
    return EXIT_OK if code == 0 else EXIT_USAGE if code == 2 else EXIT_MOUNT_FAILED
