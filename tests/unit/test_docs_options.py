"""docs/options.md, the man page and the bash completion are generated from the one options
table and the command line; they must not drift apart."""

import shutil
import subprocess
from pathlib import Path

from pictofs.cli import build_parser, command_names
from pictofs.completion import render_bash
from pictofs.manpage import render_man_page
from pictofs.optionsdoc import render_options_markdown

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "options.md"
MAN = ROOT / "docs" / "pictofs.1"
COMPLETION = ROOT / "packaging" / "completion" / "pictofs.bash"


def test_options_doc_matches_the_table():
    assert DOC.read_text() == render_options_markdown(command_names()), (
        "docs/options.md is stale: run `python -m pictofs.optionsdoc > docs/options.md`"
    )


def test_man_page_matches_the_table():
    assert MAN.read_text() == render_man_page(build_parser()), (
        "docs/pictofs.1 is stale: run `python -m pictofs.manpage > docs/pictofs.1`"
    )


def test_man_page_lists_every_option_of_every_command():
    from pictofs.config import OPTIONS

    text = MAN.read_text()
    for opt in OPTIONS:
        assert f"\\fB{('--' + opt.name).replace('-', chr(92) + '-')}\\fR" in text, opt.name
    for command in command_names():
        assert f"pictofs {command}" in text, command


def test_man_page_renders_without_warnings():
    groff = shutil.which("groff")
    assert groff, "groff is missing: .ci/run installs groff-base"
    result = subprocess.run([groff, "-man", "-Tutf8", "-ww", "-z", str(MAN)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_bash_completion_matches_the_command_line():
    assert COMPLETION.read_text() == render_bash(build_parser()), (
        "packaging/completion/pictofs.bash is stale: run "
        "`python -m pictofs.completion > packaging/completion/pictofs.bash`"
    )
