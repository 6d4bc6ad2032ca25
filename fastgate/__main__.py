"""``python -m fastgate``: the command line (see :mod:`fastgate.cli`)."""

from .cli import main

raise SystemExit(main())
