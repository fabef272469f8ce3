"""The man page ``pictofs(1)``, generated from the command line and the one options table.

``python -m pictofs.manpage > docs/pictofs.1`` writes it; a test fails when the shipped page
and this output differ, as for ``docs/options.md``. Commands, their arguments and the few
flags declared next to a command (``status --json``) come from the argparse parser; every
option, its default and its environment variable come from ``pictofs.config.OPTIONS``, and so
does the list of ``-o`` options the mount helper takes.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from pictofs.config import ENV_BASE_URL, ENV_KEY, OPTIONS, Option, options_for

# The order commands are described in; any command not named here follows, sorted.
ORDER = ("mount", "umount", "sync", "status", "refresh", "mirror", "datasets", "serve")


@dataclass(frozen=True)
class Command:
    """One command as the parser has it: ``path`` is ``("datasets", "create")`` for a verb."""

    path: tuple[str, ...]
    help: str
    parser: argparse.ArgumentParser

    @property
    def table_name(self) -> str:
        """The name the options table uses for it (verbs share their command's options)."""
        return self.path[0]


def roff(text: str) -> str:
    """Escape text for roff: backslashes, hyphens (so they stay ASCII minus signs), and a
    leading dot or quote that would read as a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    if text.startswith((".", "'")):
        text = "\\&" + text
    return text


def subcommands(parser: argparse.ArgumentParser
                ) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, help, parser) of each subcommand of ``parser``, in declaration order."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            return [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return []


def commands(parser: argparse.ArgumentParser) -> list[Command]:
    """Every runnable command, verbs expanded, in ``ORDER``."""
    found: list[Command] = []
    ranked = sorted(subcommands(parser),
                    key=lambda item: (ORDER.index(item[0]) if item[0] in ORDER else len(ORDER),
                                      item[0]))
    for name, help_text, sub in ranked:
        verbs = subcommands(sub)
        if verbs:
            found += [Command((name, verb), verb_help, verb_parser)
                      for verb, verb_help, verb_parser in verbs]
        else:
            found.append(Command((name,), sub.description or help_text, sub))
    return found


def _positionals(parser: argparse.ArgumentParser) -> list[str]:
    return [action.metavar or action.dest.upper() for action in parser._actions
            if not action.option_strings and not isinstance(action, argparse._SubParsersAction)]


def _extra_flags(command: Command) -> list[argparse.Action]:
    """Flags the parser has that the options table does not (declared next to the command)."""
    table = {opt.dest for opt in options_for(command.table_name)}
    return [action for action in command.parser._actions
            if action.option_strings and action.dest not in table and action.dest != "help"]


def _metavar(opt: Option) -> str | None:
    """What argparse shows after the flag: the table's metavar, else the upper-cased name."""
    return None if opt.flag else opt.metavar or opt.dest.upper()


def _flag_line(opt: Option) -> str:
    flags = [f"\\fB{roff('--' + opt.name)}\\fR"] + \
        ([f"\\fB{roff('-' + opt.short)}\\fR"] if opt.short else [])
    metavar = _metavar(opt)
    value = f" \\fI{roff(metavar)}\\fR" if metavar else ""
    return ", ".join(flag + value for flag in flags)


def _option_text(opt: Option) -> str:
    text = opt.help
    if opt.default is not None and not opt.flag:
        text += f" (default: {opt.default})"
    if opt.env:
        text += f"; environment {opt.env}"
    return roff(text) + "."


def _command_section(command: Command) -> list[str]:
    words = " ".join(command.path)
    positionals = " ".join(_positionals(command.parser))
    lines = [f'.SS "{roff("pictofs " + words)} [\\fIOPTIONS\\fR] {roff(positionals)}"'.rstrip()]
    if command.help:
        lines.append(roff(command.help[0].upper() + command.help[1:].rstrip(".")) + ".")
    items = [(_flag_line(opt), _option_text(opt)) for opt in options_for(command.table_name)]
    for action in _extra_flags(command):
        flags = ", ".join(f"\\fB{roff(flag)}\\fR" for flag in action.option_strings)
        metavar = action.metavar or (action.dest.upper() if action.nargs != 0 else None)
        value = f" \\fI{roff(metavar)}\\fR" if metavar else ""
        items.append((flags + value, roff(action.help) + "." if action.help else "\\&"))
    for head, text in items:
        lines += [".TP", head, text]
    return lines


def _mount_option_lines() -> list[str]:
    lines = [".TP", "\\fBro\\fR", "Same as \\fBread_only\\fR."]
    for opt in options_for("mount"):
        if opt.name in ("foreground", "options"):
            continue
        metavar = _metavar(opt)
        value = f"=\\fI{roff(metavar)}\\fR" if metavar else ""
        lines += [".TP", f"\\fB{roff(opt.dest)}\\fR{value}", f"As \\fB{roff('--' + opt.name)}\\fR."]
    return lines


def render_man_page(parser: argparse.ArgumentParser) -> str:
    """The whole page, in man(7) macros."""
    environment = sorted({opt.env for opt in OPTIONS if opt.env} | {ENV_KEY, ENV_BASE_URL})
    lines = [
        '.\\" Generated by `python -m pictofs.manpage` from pictofs/config.py and pictofs/cli.py;',
        '.\\" a test fails when this file and the generator differ.',
        '.TH PICTOFS 1 "" "pictofs" "User Commands"',
        ".SH NAME",
        "pictofs \\- Pictograph image datasets as a filesystem, a mirror and a local server",
        ".SH SYNOPSIS",
    ]
    for command in commands(parser):
        positionals = " ".join(_positionals(command.parser))
        lines += [".br", f"\\fBpictofs {roff(' '.join(command.path))}\\fR "
                  f"[\\fIOPTIONS\\fR] {roff(positionals)}".rstrip()]
    lines += [
        ".br",
        "\\fBmount \\-t fuse.pictofs\\fR \\fIDATASET\\fR|\\fB/\\fR \\fIMOUNTPOINT\\fR "
        "[\\fB\\-o\\fR \\fIOPTION\\fR[,\\fIOPTION\\fR...]]",
        ".SH DESCRIPTION",
        "\\fBpictofs mount\\fR shows a Pictograph dataset as a directory tree: folders are "
        "directories, images are files.",
        "Reads stream into a disk cache; new files upload in the background from a journal "
        "that survives crashes; \\fBrm\\fR archives.",
        "\\fBpictofs mount\\fR returns once the mount is ready and leaves its daemon in the "
        "background; \\fB\\-\\-foreground\\fR keeps it attached (for systemd units).",
        ".PP",
        "With no API key configured anywhere, commands use a local reference server "
        "(\\fBpictofs serve\\fR, started in the background) and say so in one line.",
        ".SH COMMANDS",
    ]
    for command in commands(parser):
        lines += _command_section(command)
    lines += [
        ".SH MOUNT HELPER",
        "\\fBmount \\-t fuse.pictofs\\fR and \\fI/etc/fstab\\fR lines of type "
        "\\fBfuse.pictofs\\fR run \\fB/sbin/mount.fuse.pictofs\\fR (type \\fBpictofs\\fR runs "
        "\\fB/sbin/mount.pictofs\\fR); both are links to the commands pip installs.",
        "The source is a dataset name, or \\fB/\\fR for the organization.",
        "Options are the \\fBpictofs mount\\fR options written with underscores; generic "
        "options (\\fBrw\\fR, \\fBnodev\\fR, \\fB_netdev\\fR, \\fBnofail\\fR, "
        "\\fBx\\-systemd.*\\fR, ...) are ignored, and \\fBapi_key=\\fR is refused because "
        "\\fI/etc/fstab\\fR is world\\-readable.",
        ".PP",
        ".nf",
        "my\\-dataset  /mnt/p  fuse.pictofs  "
        "ro,allow_other,_netdev,x\\-systemd.automount,key_file=/etc/pictofs/key  0 0",
        ".fi",
    ]
    lines += _mount_option_lines()
    lines += [".SH ENVIRONMENT"]
    for name in environment:
        meaning = {ENV_KEY: "The API key (after \\fB\\-\\-key\\-file\\fR).",
                   ENV_BASE_URL: "The API base URL (after \\fB\\-\\-base\\-url\\fR)."
                   }.get(name, "")
        lines += [".TP", f"\\fB{roff(name)}\\fR", meaning or "See the option that names it."]
    lines += [
        ".TP", "\\fBXDG_CACHE_HOME\\fR, \\fBXDG_STATE_HOME\\fR, \\fBXDG_DATA_HOME\\fR, "
        "\\fBXDG_RUNTIME_DIR\\fR",
        "Where the cache, the upload journal, the local server's data and the control "
        "sockets live (below).",
        ".TP", "\\fBNOTIFY_SOCKET\\fR",
        "Set by systemd for \\fBType=notify\\fR units: \\fBpictofs mount \\-\\-foreground\\fR "
        "sends READY=1 once the mount answers.",
        ".SH FILES",
        ".TP", "\\fI~/.pictograph/config.toml\\fR",
        "\\fB[default]\\fR \\fBapi_key\\fR and \\fBbase_url\\fR, as the official SDK writes "
        "them.",
        ".TP", "\\fI$XDG_CACHE_HOME/pictofs/\\fR",
        "The image cache (disposable).",
        ".TP", "\\fI$XDG_STATE_HOME/pictofs/\\fR",
        "Upload journals and staged files (not disposable: uploads resume from here).",
        ".TP", "\\fI$XDG_DATA_HOME/pictofs/server/\\fR",
        "The local server's data.",
        ".TP", "\\fI$XDG_RUNTIME_DIR/pictofs/\\fR",
        "Control sockets of running mounts (the state folder when unset).",
        ".SH EXIT STATUS",
        "0 on success, 1 on an error (one line on standard error), 2 on a usage error.",
        "The mount helper returns 0, 1 for a bad invocation or option, and 32 when mounting "
        "failed, as \\fBmount\\fR(8) expects.",
        ".SH NOTES",
        "Sizes: \\fB500M\\fR, \\fB10G\\fR (binary: 10 GiB), a bare number is bytes.",
        "Durations: \\fB2\\fR or \\fB2s\\fR, \\fB500ms\\fR, \\fB5m\\fR, \\fB1h\\fR.",
        ".SH SEE ALSO",
        "\\fBmount\\fR(8), \\fBfstab\\fR(5), \\fBfusermount3\\fR(1), \\fBsystemd.mount\\fR(5), "
        "\\fBsystemd.service\\fR(5)",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover - documentation generator
    from pictofs.cli import build_parser

    print(render_man_page(build_parser()), end="")
