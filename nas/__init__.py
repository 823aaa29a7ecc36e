"""Training-aware neural architecture search: specs, models, data, training and scaling.

The Python API (README, "Python API"): ``nas.create_model``, ``nas.load_spec`` and ``nas.user_dataset``
(:mod:`nas.api`, loaded on first use so ``import nas`` stays light). A sweep from Python is
``runners.api.search``: it needs the driver, and the core package never imports the runners.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"
__all__ = ["create_model", "load_spec", "user_dataset"]
_LAZY = {"create_model": "nas.api", "load_spec": "nas.api", "user_dataset": "nas.api"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nas' has no attribute {name!r}")
