"""``python -m runners.cli``: the ``nas`` command."""

from runners.cli import main

raise SystemExit(main())
