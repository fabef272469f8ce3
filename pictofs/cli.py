"""The command line: parses options, builds and wires the objects, maps errors to exit codes.

Subcommands so far: ``serve`` (the reference server and its admin verbs) and ``datasets``
(list, create). User errors (``pictofs.errors.PictofsError``) print one line and exit 1;
usage errors exit 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from pictofs import __version__, dirs
from pictofs.config import add_options, finish_options
from pictofs.errors import ConfigError, PictofsError
from pictofs.logsetup import setup_logging
from pictofs.units import format_size

log = logging.getLogger(__name__)

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
LONG_RUNNING = ("serve", "mount", "mirror")  # these log progress at INFO; the rest warn only


class UsageError(Exception):
    """The command line's words are off (exit 2)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pictofs",
        description="Pictograph image datasets as a filesystem, a mirror, and a local server.",
    )
    parser.add_argument("--version", action="version", version=f"pictofs {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the reference server (SQLite + blob folder)")
    add_options(serve, "serve")
    serve.set_defaults(handler=cmd_serve)

    datasets = commands.add_parser("datasets", help="list or create datasets")
    verbs = datasets.add_subparsers(dest="verb", metavar="VERB")
    listing = verbs.add_parser("list", help="list the organization's datasets")
    add_options(listing, "datasets")
    listing.set_defaults(handler=cmd_datasets_list)
    create = verbs.add_parser("create", help="create a dataset")
    add_options(create, "datasets")
    create.add_argument("name", metavar="NAME")
    create.add_argument("--description", default=None, help="a line describing the dataset")
    create.add_argument("--exist-ok", action="store_true",
                        help="succeed when a dataset of that name already exists")
    create.set_defaults(handler=cmd_datasets_create)

    mount = commands.add_parser(
        "mount", help="mount a dataset (or, with no DATASET, the organization)",
        description="Mount DATASET on MOUNTPOINT; with no DATASET, one directory per dataset.")
    mount.add_argument("places", nargs="+", metavar="[DATASET] MOUNTPOINT")
    add_options(mount, "mount")
    mount.set_defaults(handler=cmd_mount)

    umount = commands.add_parser("umount", help="unmount a pictofs mount")
    umount.add_argument("mountpoint", metavar="MOUNTPOINT")
    add_options(umount, "umount")
    umount.set_defaults(handler=cmd_umount)

    status = commands.add_parser("status", help="show a mount's state")
    status.add_argument("mountpoint", metavar="MOUNTPOINT")
    add_options(status, "status")
    status.set_defaults(handler=cmd_status)

    sync = commands.add_parser("sync", help="wait until a mount's uploads have landed")
    sync.add_argument("mountpoint", metavar="MOUNTPOINT")
    add_options(sync, "sync")
    sync.set_defaults(handler=cmd_sync)

    refresh = commands.add_parser("refresh", help="drop a mount's listing cache now")
    refresh.add_argument("mountpoint", metavar="MOUNTPOINT")
    add_options(refresh, "refresh")
    refresh.set_defaults(handler=cmd_refresh)

    mirror = commands.add_parser(
        "mirror", help="keep a dataset folder in step with a local folder (one way)",
        description="Mirror LOCAL_DIR into DATASET[:/folder]: upload what is missing, then "
                    "watch and upload changes.")
    mirror.add_argument("local_dir", metavar="LOCAL_DIR")
    mirror.add_argument("target", metavar="DATASET[:/folder]")
    add_options(mirror, "mirror")
    mirror.set_defaults(handler=cmd_mirror)
    return parser


# ------------------------------------------------------------------------------ serve


def cmd_serve(args: argparse.Namespace) -> int:
    from pictofs.server import run

    data_dir = Path(args.data).expanduser() if args.data else dirs.server_data_dir()
    if args.stop:
        stopped = run.stop(data_dir)
        print("server stopped" if stopped else f"no server running on {data_dir}")
        return EXIT_OK if stopped else EXIT_ERROR
    if args.create_org:
        print(run.create_org(data_dir, args.create_org))
        return EXIT_OK
    if args.create_key:
        print(run.create_key(data_dir, args.create_key, args.org))
        return EXIT_OK
    if args.list_keys:
        print(run.format_keys(run.list_keys(data_dir, args.org)))
        return EXIT_OK
    if args.revoke_key:
        print(run.revoke_key(data_dir, args.revoke_key))
        return EXIT_OK
    if args.org:
        raise ConfigError("--org goes with --create-key or --list-keys")
    return run.serve(data_dir, host=args.host, port=args.port, storage_port=args.storage_port,
                     profile=args.profile, storage_host=args.storage_host)


# --------------------------------------------------------------------------- datasets


def _client(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from pictofs.api import Client
    from pictofs.embedded import connect

    conn = connect(base_url=args.base_url, key_file=args.key_file)
    return Client(api_key=conn.api_key, base_url=conn.base_url)


def cmd_datasets_list(args: argparse.Namespace) -> int:
    client = _client(args)
    rows = [(d.name, str(d.image_count), format_size(d.total_size), d.id)
            for d in client.projects.list()]
    header = ("NAME", "IMAGES", "SIZE", "ID")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths)) + "  " + row[3])
    return EXIT_OK


def cmd_datasets_create(args: argparse.Namespace) -> int:
    from pictofs.errors import AlreadyExists

    client = _client(args)
    try:
        dataset = client.projects.create(args.name, description=args.description)
    except AlreadyExists:
        if not args.exist_ok:
            raise
        dataset = client.projects.get(args.name)
        print(f"dataset {dataset.name} exists ({dataset.id})")
        return EXIT_OK
    print(f"created dataset {dataset.name} ({dataset.id})")
    return EXIT_OK


# ------------------------------------------------------------------------------ mount


def cmd_mount(args: argparse.Namespace) -> int:
    from pictofs import mounting

    if len(args.places) > 2:
        raise UsageError("mount takes [DATASET] MOUNTPOINT")
    args.dataset = args.places[0] if len(args.places) == 2 else None
    args.mountpoint = args.places[-1]
    if args.foreground:
        return mounting.run_foreground(args)
    return mounting.mount_in_background(args, list(args.argv))


def cmd_umount(args: argparse.Namespace) -> int:
    from pictofs import control
    from pictofs.fs.fuse_session import abort_connection, mount_entry, unmount

    mountpoint = os.path.abspath(args.mountpoint)
    try:
        pid = int(control.request(mountpoint, "status", socket_timeout=10)["pid"])
    except ConfigError:
        pid = None
        entry = mount_entry(mountpoint)
        # a daemon that died leaves its mount (unmounted below); anything else is said
        # plainly instead of fusermount3's "Invalid argument"
        if entry is None or not entry.is_pictofs or (
                os.getuid() != 0 and entry.owner not in (None, os.getuid())):
            raise ConfigError(control.no_socket_reason(mountpoint)
                              + ("; nothing to unmount" if entry is None else "")) from None
    failed: list[dict[str, str]] = []
    if pid is not None and not args.force:
        idle, failed = _wait_for_uploads(mountpoint, args.timeout)
        if not idle:
            raise ConfigError(f"uploads still pending after {args.timeout:.0f}s; not "
                              f"unmounted (--force unmounts now; they resume at the next mount)")
    if args.force:
        abort_connection(mountpoint)
    unmount(mountpoint, lazy=args.force)
    if pid is not None and not _wait_exit(pid, args.timeout):
        raise ConfigError(f"unmounted, but the daemon (pid {pid}) did not exit within "
                          f"{args.timeout:.0f}s")
    print(f"unmounted {mountpoint}", file=sys.stderr)
    return _report_failed(failed)


def _wait_for_uploads(mountpoint: str, timeout: float) -> tuple[bool, list[dict[str, str]]]:
    """Wait for the mount's queue with a progress line; (idle, failed uploads)."""
    import time

    from pictofs import control

    deadline = time.monotonic() + timeout
    shown = False
    while True:
        remaining = deadline - time.monotonic()
        reply = control.request(mountpoint, "sync", socket_timeout=60,
                                timeout=max(0.0, min(remaining, 1.0)))
        if reply["idle"] or remaining <= 0:
            if shown:
                print(file=sys.stderr)
            return bool(reply["idle"]), reply["failed"]
        if sys.stderr.isatty() or not shown:
            print(f"\rwaiting for {reply['pending'] + reply['in_flight']} upload(s)…",
                  end="", file=sys.stderr, flush=True)
            shown = True


def _report_failed(failed: list[dict[str, str]]) -> int:
    for item in failed:
        print(f"pictofs: upload failed: {item['path']}: {item['error']}", file=sys.stderr)
    return EXIT_ERROR if failed else EXIT_OK


def cmd_sync(args: argparse.Namespace) -> int:
    from pictofs import control

    timeout = args.timeout
    reply = control.request(args.mountpoint, "sync",
                            socket_timeout=None if timeout is None else timeout + 30,
                            timeout=timeout)
    if not reply["idle"]:
        pending = reply["pending"] + reply["in_flight"]
        print(f"pictofs: {pending} upload(s) still pending after {timeout:.0f}s",
              file=sys.stderr)
        _report_failed(reply["failed"])
        return EXIT_ERROR
    return _report_failed(reply["failed"])


def _wait_exit(pid: int, timeout: float) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def cmd_status(args: argparse.Namespace) -> int:
    import json

    from pictofs import control

    reply = control.request(args.mountpoint, "status")
    reply.pop("ok", None)
    if args.json:
        print(json.dumps(reply, indent=2, sort_keys=True))
        return EXIT_OK
    print(f"mountpoint: {reply['mountpoint']}")
    print(f"dataset:    {reply['dataset'] or '(organization)'} at {reply['base_url']}")
    print(f"service:    {reply['service']}")
    print(f"open files: {reply['open_files']}  reads: {reply['reads']}  "
          f"read: {format_size(reply['bytes_read'])}")
    uploads = reply.get("uploads", {})
    print(f"uploads:    {uploads.get('pending', 0)} pending, {uploads.get('in_flight', 0)} "
          f"in flight, {len(uploads.get('failed', []))} failed, "
          f"{format_size(int(uploads.get('upload_rate', 0)))}/s"
          + ("  (paused: API key rejected)" if uploads.get("paused") else ""))
    for item in uploads.get("failed", []):
        print(f"  failed:   {item['path']}: {item['error']}")
    kept = uploads.get("kept_aside", [])
    if kept:
        folder = os.path.commonpath(kept) if len(kept) > 1 else os.path.dirname(kept[0])
        print(f"kept aside: {len(kept)} staged file(s) the journal lost track of, in {folder} "
              "(copy them back into the mount to upload them)")
    for item in uploads.get("stranded", []):
        print(f"stranded:   {item['pending']} pending upload(s) in {item['folder']} "
              "(another journal of this dataset; taken over at the next mount)")
    local = reply.get("local_only", {})
    if local.get("files"):
        print(f"local only: {local['files']} local-only files, not on the service "
              f"({format_size(local['bytes'])})")
    if reply.get("trashed"):
        print(f"trash:      {reply['trashed']} item(s) in .Trash-UID/files (their images "
              "archived on the service)")
    if reply.get("skipped_names"):
        print(f"skipped:    {reply['skipped_names']} names from the service the mount cannot "
              "show (logged)")
    for cache in reply.get("cache", []):
        print(f"cache:      {cache['dataset']}: {format_size(cache['size_bytes'])} in "
              f"{cache['entries']} images, hit ratio {cache['hit_ratio']:.0%}")
    return EXIT_OK


def cmd_refresh(args: argparse.Namespace) -> int:
    from pictofs import control

    control.request(args.mountpoint, "refresh")
    print(f"listing cache of {args.mountpoint} dropped", file=sys.stderr)
    return EXIT_OK


# ----------------------------------------------------------------------------- mirror


def cmd_mirror(args: argparse.Namespace) -> int:
    from pictofs import mirroring

    return mirroring.run_mirror(args)


# ------------------------------------------------------------------------------- main


def command_names() -> list[str]:
    """The subcommands this version has (the options doc covers exactly these)."""
    for action in _parser()._subparsers._group_actions:  # type: ignore[union-attr]
        if isinstance(action, argparse._SubParsersAction):
            return sorted(action.choices)
    return []


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, for what is generated from it (man page, completion)."""
    return _parser()


def _is_mount_helper_form(argv: Sequence[str]) -> bool:
    """``pictofs SOURCE MOUNTPOINT -o OPTIONS``: how ``mount.fuse3`` runs a filesystem that
    has no ``mount.fuse.pictofs`` helper (see ``pictofs.fstab``)."""
    return (bool(argv) and not argv[0].startswith("-")
            and any(word.startswith("-o") for word in argv)
            and argv[0] not in command_names())


def mount_helper_main() -> int:
    """Entry point of the ``mount.fuse.pictofs`` and ``mount.pictofs`` console scripts
    (mount(8)'s helpers): ``pictofs.fstab`` translates, ``main`` mounts."""
    from pictofs.fstab import run

    return run(sys.argv[1:], os.path.basename(sys.argv[0]) or "mount.pictofs",
               pictofs_main=main)


def mount_options_anywhere(argv: list[str]) -> list[str]:
    """``pictofs mount`` takes mount(8)'s ``-o OPTION[,OPTION...]`` (also ``-oOPTIONS``,
    ``--options``, repeated) anywhere on its line, as mount(8) does: they are taken out and
    translated by the fstab helper's table (``ro`` → ``--read-only``, ``cache_size=5G`` →
    ``--cache-size 5G``), their flags put at the end. Other commands are left alone."""
    from pictofs.fstab import split_options, translate_options

    if not argv or argv[0] != "mount":
        return argv
    kept: list[str] = []
    items: list[str] = []
    words = iter(argv[1:])
    for word in words:
        if word == "--":
            kept += [word, *words]
            break
        if word in ("-o", "--options"):
            value = next(words, None)
            if value is None:
                raise UsageError(f"{word} needs OPTION[,OPTION...]")
            items += split_options(value)
        elif word.startswith("--options="):
            items += split_options(word.partition("=")[2])
        elif word.startswith("-o") and len(word) > 2:
            items += split_options(word[2:])
        else:
            kept.append(word)
    if not items:
        return argv
    flags, _warnings = translate_options(items)
    return ["mount", *kept, *flags]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if _is_mount_helper_form(argv):
        from pictofs.fstab import run

        return run(argv, prog="pictofs", pictofs_main=main)
    try:
        argv = mount_options_anywhere(argv)
    except (UsageError, ConfigError) as exc:
        print(f"pictofs: {exc}", file=sys.stderr)
        return EXIT_USAGE
    parser = _parser()
    args = parser.parse_args(argv)
    args.argv = argv
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    verbose = bool(getattr(args, "verbose", False))
    daemon = args.command == "mount" and bool(os.environ.get("PICTOFS_READY_FD"))
    setup_logging(verbose=verbose, log_file=getattr(args, "log_file", None), syslog=daemon,
                  quiet=args.command not in LONG_RUNNING)
    try:
        finish_options(args, args.command)
        return handler(args)
    except UsageError as exc:
        print(f"pictofs: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except PictofsError as exc:
        if verbose:
            log.debug("details", exc_info=True)
        print(f"pictofs: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("pictofs: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `pictofs status --json | head`: the reader left; not a bug
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
