"""YAML as users write numbers: ``1e-4`` reads as a float, as in YAML 1.2 and JSON.

PyYAML follows YAML 1.1, whose floats need a dot (``1.0e-4``), so ``learning_rate: 1e-4`` in a
hyperparameter file or ``--grid learning_rate=1e-4`` reached a config as the string ``"1e-4"``.
Every YAML the command line reads (its values, hyperparameter files, run configs) loads here.
"""

from __future__ import annotations

import re
from typing import Any

import yaml


class _Loader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML ships no types
    """SafeLoader that also resolves YAML 1.2's dotless exponent floats."""


# Copies the resolver table onto the subclass: yaml.safe_load keeps YAML 1.1's.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load(text: str) -> Any:
    """``yaml.safe_load`` with ``1e-4``-style floats."""
    return yaml.load(text, Loader=_Loader)
