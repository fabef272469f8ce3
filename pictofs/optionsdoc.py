"""``docs/options.md``, generated from the one options table (``pictofs.config.OPTIONS``).

``python -m pictofs.optionsdoc > docs/options.md`` writes it; a test fails when the shipped
file and this output differ. Which commands it covers comes from the command line
(``pictofs.cli.command_names``), imported only when run as a program, so that this module,
like ``manpage`` and ``completion``, sits above the options table and the command line sits
above nothing it generates.
"""

from __future__ import annotations

from pictofs.config import options_for


def render_options_markdown(commands: list[str]) -> str:
    """The options reference of ``commands``, generated from ``OPTIONS`` (docs/options.md)."""
    lines = ["# Options", "",
             "Generated from `pictofs/config.py` by `python -m pictofs.optionsdoc`;",
             "a test fails when this file and the table differ.", ""]
    for command in sorted(commands):
        lines += [f"## pictofs {command}", "", "| Option | Default | Environment | Meaning |",
                  "|---|---|---|---|"]
        for opt in options_for(command):
            flag = f"`--{opt.name}`" + (f", `-{opt.short}`" if opt.short else "")
            if opt.metavar:
                flag = f"`--{opt.name} {opt.metavar}`" + (f", `-{opt.short}`" if opt.short else "")
            default = "off" if opt.flag else ("" if opt.default is None else f"`{opt.default}`")
            env = f"`{opt.env}`" if opt.env else ""
            lines.append(f"| {flag} | {default} | {env} | {opt.help} |")
        lines.append("")
    lines += ["Sizes: `500M`, `10G` (binary: 10 GiB), a bare number is bytes. "
              "Durations: `2` or `2s`, `500ms`, `5m`, `1h`.", ""]
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - documentation generator
    from pictofs.cli import command_names

    print(render_options_markdown(command_names()), end="")
