"""Your own Hydra app using eecontrol's config groups, callbacks and report.

Run it from anywhere (eecontrol installed, e.g. ``pip install eecontrol``)::

    python examples/own_hydra_app/app.py
    python examples/own_hydra_app/app.py callbacks.early_dropout.p=0.3 trainer.max_epochs=5

``conf/config.yaml`` takes ``callbacks``, ``model`` and ``data`` from eecontrol's packaged
configs (``hydra.searchpath: [pkg://eecontrol.conf]``) and overrides some of their values.
"""

from __future__ import annotations

import hydra
import lightning.pytorch as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig

from eecontrol.report import all_decisions, print_decisions, report_run


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """Trains the configured model with the configured eecontrol callbacks; returns val/acc."""
    L.seed_everything(cfg.seed)
    run_dir = HydraConfig.get().runtime.output_dir
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    trainer = L.Trainer(
        **cfg.trainer,
        callbacks=callbacks,
        default_root_dir=run_dir,  # decisions.jsonl and the report go here
        logger=CSVLogger(run_dir, name="csv", version=0),
        enable_progress_bar=False,
    )
    model, data = instantiate(cfg.model), instantiate(cfg.data)
    trainer.fit(model, datamodule=data)
    print_decisions(all_decisions(trainer))
    _, plots, page = report_run(run_dir)
    print(f"{len(plots)} plots; report: {page}")
    return float(trainer.callback_metrics["val/acc"])


if __name__ == "__main__":
    main()
