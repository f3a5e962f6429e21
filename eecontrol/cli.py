"""``eecontrol``: a re-export shim of :mod:`eecontrol.app.cli`."""

from __future__ import annotations

import sys

from eecontrol.app.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
