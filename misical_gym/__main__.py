"""``python -m misical_gym`` is the ``misical`` command."""

from misical_gym.cli import main

raise SystemExit(main())
