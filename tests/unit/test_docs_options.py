"""docs/options.md is generated from the one options table; they must not drift apart."""

from pathlib import Path

from pictofs.cli import command_names
from pictofs.config import render_options_markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "options.md"


def test_options_doc_matches_the_table():
    assert DOC.read_text() == render_options_markdown(command_names()), (
        "docs/options.md is stale: run `python -m pictofs.config > docs/options.md`"
    )
