"""Entry point for ``python -m reconciler``; hands over to the CLI."""

from reconciler.cli import main

raise SystemExit(main())
