"""``python -m misical_gym.train ...`` is ``misical train ...``."""

from __future__ import annotations

import sys

from misical_gym.cli import main

raise SystemExit(main(["train", *sys.argv[1:]]))
