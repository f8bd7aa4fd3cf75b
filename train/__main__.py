"""``python -m misical_gym.train ...`` is ``misical train ...``."""

from misical_gym.cli import main

raise SystemExit(main(["train", *__import__("sys").argv[1:]]))
