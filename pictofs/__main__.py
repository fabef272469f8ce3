"""`python -m pictofs` runs the command line."""

from pictofs.cli import main

raise SystemExit(main())
