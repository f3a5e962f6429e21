"""summary.json's `objective` is the value the sweeper receives (a real fit, real stop)."""

from __future__ import annotations

import json
from typing import Any

from lightning.pytorch.loggers import CSVLogger

from eecontrol.callbacks._control import ControlCallback
from eecontrol.train import finalize_run, sweeper_value
from tests.conftest import digits_data, digits_model, make_trainer


class StopWithBest(ControlCallback):
    """Stops after `epochs` validations; reports a best value unlike the last one."""

    def __init__(self, monitor: str, epochs: int) -> None:
        super().__init__()
        self.monitor, self.epochs = monitor, epochs
        self.seen: list[float] = []

    def _config(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "epochs": self.epochs}

    @property
    def best_so_far(self) -> float | None:
        return max(self.seen) + 1.0 if self.seen else None  # +1: differs from every value

    def on_validation_end(self, trainer, pl_module) -> None:
        self.seen.append(float(trainer.callback_metrics[self.monitor]))
        self._stop(trainer, len(self.seen) >= self.epochs, "enough", {"n": len(self.seen)})


def test_summary_objective_is_what_the_sweeper_receives(tmp_path):
    cb = StopWithBest("val/acc", epochs=2)
    trainer = make_trainer(
        tmp_path,
        max_epochs=5,
        limit_train_batches=2,
        callbacks=[cb],
        logger=CSVLogger(tmp_path, name="csv", version=0),
    )
    trainer.fit(digits_model(), datamodule=digits_data())
    assert cb.stop_reason == "enough" and trainer.current_epoch == 2  # it really stopped
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    finalize_run(trainer, metrics, "val/acc")
    summary = json.loads((tmp_path / "summary.json").read_text())
    returned = sweeper_value(trainer, metrics, "val/acc")
    assert returned == cb.best_so_far != metrics["val/acc"]
    assert summary["objective"] == returned
    assert summary["last_value"] == metrics["val/acc"]
    assert (tmp_path / "report" / "report.html").exists()
