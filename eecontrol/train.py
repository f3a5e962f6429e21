"""``eecontrol-train``: a re-export shim of :mod:`eecontrol.app.train` and :mod:`eecontrol.app.job`.

``main`` (the console script) is light; every other name (``train``, ``finalize_run``,
``sweeper_value``, ...) is imported from :mod:`eecontrol.app.job` on first use, so that
``eecontrol-train --help`` imports neither torch nor Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

from eecontrol.app.train import hydra_main, main

__all__ = ["hydra_main", "main"]


def __getattr__(name: str) -> Any:
    """Names of :mod:`eecontrol.app.job` (imported on first use)."""
    if name.startswith("__"):  # import machinery probes (``__path__``): no training import
        raise AttributeError(name)
    module = importlib.import_module("eecontrol.app.job")
    try:
        return getattr(module, name)
    except AttributeError:
        raise AttributeError(f"module 'eecontrol.train' has no attribute {name!r}") from None


if __name__ == "__main__":
    main()
