"""Early / late dropout against no dropout and standard dropout on real digits, several seeds.

The paper's claims (Liu et al., ICML 2023): early dropout lowers the final training loss of
underfitting models; late dropout improves test accuracy of overfitting ones. This runs
the `early_dropout` and `late_dropout` experiment configs with each variant:

- ``none``: the same model built with dropout 0 and no schedule;
- ``standard``: constant dropout p for the whole run;
- ``early`` / ``late``: the experiment's schedule.

The final training loss is measured after fit on the whole training split in eval mode
(no dropout), so the variants are compared on the same function. Writes JSON and prints
a table with mean +- std over seeds.

    python benchmarks/dropout.py --seeds 5 --out benchmarks/results/dropout.json
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_module
from omegaconf import open_dict

from eecontrol.train import train

VARIANTS = {
    "early_dropout": ("none", "standard", "early"),
    "late_dropout": ("none", "standard", "late"),
}


def _cfg(experiment: str, variant: str, seed: int, out: Path, extra: list[str]) -> Any:
    cb = experiment  # the callback key equals the experiment name in both configs
    overrides = [f"experiment={experiment}", f"seed={seed}", "logger=none", *extra]
    if variant == "none":
        overrides += ["model.net.dropout=0.0"]
    elif variant == "standard":
        overrides += [f"callbacks.{cb}.mode=standard"]
    with initialize_config_module(config_module="eecontrol.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.root_dir = str(out)
        cfg.paths.output_dir = str(out / f"{experiment}-{variant}-{seed}")
        cfg.callbacks.pop("rich_progress_bar", None)
        cfg.callbacks.pop("model_checkpoint", None)
        cfg.trainer.enable_progress_bar = False
        cfg.trainer.enable_model_summary = False
        cfg.trainer.enable_checkpointing = False
        if variant == "none":
            cfg.callbacks.pop(cb, None)
    return cfg


@torch.no_grad()
def _train_loss(trainer: Any) -> float:
    """Cross-entropy of the final model on the whole training split, in eval mode."""
    model = trainer.lightning_module
    model.eval()
    data = trainer.datamodule.train_set
    x, y = data.tensors
    return float(torch.nn.functional.cross_entropy(model(x), y))


def run(seeds: int, experiments: list[str], extra: list[str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for experiment in experiments:
            for seed in range(seeds):
                for variant in VARIANTS[experiment]:
                    cfg = _cfg(experiment, variant, seed, Path(tmp), extra)
                    start = time.perf_counter()
                    metrics, trainer = train(cfg)
                    rows.append(
                        {
                            "experiment": experiment,
                            "variant": variant,
                            "seed": seed,
                            "final_train_loss": _train_loss(trainer),
                            "test_acc": metrics["test/acc"],
                            "test_loss": metrics["test/loss"],
                            "seconds": time.perf_counter() - start,
                        }
                    )
                    print(json.dumps(rows[-1]))
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    keys = sorted(
        {(r["experiment"], r["variant"]) for r in rows},
        key=lambda k: (k[0], VARIANTS[k[0]].index(k[1])),
    )
    for experiment, variant in keys:
        sel = [r for r in rows if r["experiment"] == experiment and r["variant"] == variant]
        entry: dict[str, Any] = {"experiment": experiment, "variant": variant, "n": len(sel)}
        for metric in ("final_train_loss", "test_acc"):
            vals = [r[metric] for r in sel]
            entry[f"{metric}_mean"] = statistics.fmean(vals)
            entry[f"{metric}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        out.append(entry)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--experiments", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/dropout.json"))
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)
    rows = run(args.seeds, args.experiments, args.overrides)
    summary = summarise(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "command": "python benchmarks/dropout.py "
                + " ".join(
                    [f"--seeds {args.seeds}", "--experiments", *args.experiments, *args.overrides]
                ),
                "summary": summary,
                "runs": rows,
            },
            indent=2,
        )
    )
    print(f"\n{'experiment':<15}{'variant':<10}{'final train loss':>22}{'test acc':>20}")
    for s in summary:
        print(
            f"{s['experiment']:<15}{s['variant']:<10}"
            f"{s['final_train_loss_mean']:>13.4f} ± {s['final_train_loss_std']:.4f}"
            f"{s['test_acc_mean']:>12.4f} ± {s['test_acc_std']:.4f}"
        )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
