"""The test kit's Trainer arguments (:func:`eecontrol.testing.quiet_trainer_kwargs`), which
the suite's ``make_trainer``, the settings harness and the benchmarks build on."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl

from eecontrol.testing import quiet_trainer_kwargs


def test_quiet_trainer_kwargs_build_a_quiet_trainer(tmp_path: Path) -> None:
    kwargs = quiet_trainer_kwargs(tmp_path)
    assert kwargs["default_root_dir"] == str(tmp_path)
    trainer = pl.Trainer(**kwargs)
    assert trainer.logger is None
    assert trainer.checkpoint_callback is None
    assert trainer.progress_bar_callback is None
    assert trainer.num_sanity_val_steps == 0
    assert quiet_trainer_kwargs(tmp_path) is not kwargs  # a new dict each call
