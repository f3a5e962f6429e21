"""``eecontrol-eval``: a re-export shim of :mod:`eecontrol.app.evaluate`."""

from __future__ import annotations

from eecontrol.app.evaluate import EVAL_FILE, evaluate, hydra_main, main, resolve_checkpoint

__all__ = ["EVAL_FILE", "evaluate", "hydra_main", "main", "resolve_checkpoint"]

if __name__ == "__main__":
    main()
