"""``python -m triggerbus`` is the ``triggerbus`` command."""

from triggerbus.cli import main

raise SystemExit(main())
