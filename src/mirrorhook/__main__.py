"""Entry point for ``python -m mirrorhook``."""

from mirrorhook.cli import main

raise SystemExit(main())
