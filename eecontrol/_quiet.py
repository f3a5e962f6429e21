"""Silences, once per process, third-party messages that say nothing about the user's run.

Only ``eecontrol-train`` calls this (importing eecontrol changes no global state):

* Lightning's "Tip: ... try installing litlogger" on every Trainer (an advertisement);
* torch / Lightning's ``isinstance(treespec, LeafSpec)`` deprecation, raised inside
  Lightning's own ``_pytree`` helper (nothing a user can change).

W&B's "Deprecated setting 'anonymous'" comes from the user's own W&B settings file
(``wandb login`` clears it) and is left alone.
"""

from __future__ import annotations

import logging
import warnings

_RANK_ZERO_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning_fabric.utilities.rank_zero",
)


class _DropTip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in str(record.getMessage())


_DONE = False


def silence_third_party_noise() -> None:
    """Installs the filters (idempotent)."""
    global _DONE
    if _DONE:
        return
    _DONE = True
    for name in _RANK_ZERO_LOGGERS:
        logging.getLogger(name).addFilter(_DropTip())
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated.*")
