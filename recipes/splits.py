"""Kept for imports of ``eecontrol.recipes.splits``: the base now lives in ``recipes/base.py``."""

from eecontrol.recipes.base import TensorSplitsDataModule, check_split_args

__all__ = ["TensorSplitsDataModule", "check_split_args"]
