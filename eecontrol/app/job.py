"""One ``eecontrol-train`` job: build, fit and test a recipe, report decisions.

The console script and its Hydra entry point are in :mod:`eecontrol.app.train`.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

from eecontrol._quiet import silence_third_party_noise
from eecontrol.app.resume import ResumeError, RunLock, RunLockedError, describe_checkpoint
from eecontrol.app.train import _redact_log_records
from eecontrol.callbacks._control import (
    DECISIONS_FILE,
    all_decisions,
    check_monitor_mode,
    control_callbacks,
)
from eecontrol.callbacks.checkpoint import CheckpointWriteError, ResumableCheckpoint
from eecontrol.callbacks.csv_logger import ResumableCSVLogger
from eecontrol.core.checks import check_bool
from eecontrol.extras import explain_missing_module
from eecontrol.report.console import print_decisions, print_run_paths
from eecontrol.report.runreport import report_run, run_summary, write_summary
from eecontrol.report.wandb import publish_to_wandb
from eecontrol.sweep.trial import pruning_callbacks, record_objective
from eecontrol.util.files import CHECKPOINT_DIR, LAST, UnsafeRunDirError
from eecontrol.util.redact import env_secrets, redact_hydra_files, redact_secrets, redact_text

log = logging.getLogger(__name__)


def _instantiate_group(cfg: DictConfig | None, what: str, base: type) -> list[Any]:
    """Instantiates every entry with a ``_target_`` of a config group dict."""
    items: list[Any] = []
    if not cfg:
        return items
    if not isinstance(cfg, DictConfig):
        raise TypeError(f"`{what}` config must be a mapping of name -> config, got {type(cfg)}.")
    for key, conf in cfg.items():
        if isinstance(conf, DictConfig) and "_target_" in conf:
            check_bool_options(conf, f"{what}.{key}")
            # _convert_="all": plain dicts and lists, never omegaconf containers, reach the
            # objects (and so their checkpoints, which load with weights_only=True)
            obj = hydra.utils.instantiate(conf, _convert_="all")
            if not isinstance(obj, base):
                raise TypeError(
                    f"`{what}.{key}` instantiated {type(obj).__name__}, not a {base.__name__}."
                )
            items.append(obj)
    return items


def _bool_parameters(target: str) -> dict[str, bool]:
    """The parameters of ``target`` (a class or function path) annotated ``bool``.

    Returns ``{name: none_ok}`` (``none_ok`` for ``bool | None``); empty when the target
    cannot be inspected.
    """
    import inspect

    try:
        obj = hydra.utils.get_object(target)
        params = inspect.signature(obj).parameters
    except (ImportError, AttributeError, ValueError, TypeError, Exception):
        return {}
    out: dict[str, bool] = {}
    for name, param in params.items():
        ann = param.annotation
        text = ann if isinstance(ann, str) else getattr(ann, "__name__", str(ann))
        text = str(text).replace(" ", "")
        if text == "bool":
            out[name] = False
        elif text in ("bool|None", "None|bool", "Optional[bool]", "typing.Optional[bool]"):
            out[name] = True
    return out


def check_bool_options(conf: DictConfig, where: str) -> None:
    """Every option of a ``_target_`` config whose parameter is a ``bool`` must be a real bool.

    ``"no"``, ``"false"`` or ``"0"`` (a quoted YAML string, or a command-line value Hydra
    reads as a string) would be true to ``bool()``: a ``ValueError`` names the option instead.
    """
    for name, none_ok in _bool_parameters(str(conf.get("_target_"))).items():
        if name in conf:
            check_bool(f"{where}.{name}", conf[name], none_ok=none_ok)


class _OptimizedMetricCheck(Callback):
    """Fails at the first validation (or the second epoch) if ``optimized_metric`` is not logged.

    Without it, a misspelt ``optimized_metric`` fails only after the whole training. Test
    metrics (``test/...``) can only be checked after testing.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.epochs_seen = 0

    def _check(self, trainer: pl.Trainer) -> None:
        if self.name.startswith("test/") or self.name in trainer.callback_metrics:
            return
        raise ValueError(
            f"`optimized_metric={self.name}` is not logged by the model; logged so far: "
            f"{sorted(k for k in trainer.callback_metrics if not k.startswith('eecontrol/'))}. "
            f"Set `optimized_metric` to one of them (or null)."
        )

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and self.name.startswith("val"):
            self._check(trainer)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epochs_seen += 1
        if self.epochs_seen > 1:  # every epoch-level metric of the first epoch is logged now
            self._check(trainer)


def _one_progress_bar(callbacks: list[Callback]) -> list[Callback]:
    """Keeps the last progress bar listed (``callbacks=[default,tqdm_progress_bar]``: tqdm).

    Lightning refuses two progress bars; the one named last on the command line wins, with
    a warning naming the one left out.
    """
    from lightning.pytorch.callbacks import ProgressBar

    bars = [cb for cb in callbacks if isinstance(cb, ProgressBar)]
    if len(bars) < 2:
        return callbacks
    keep = bars[-1]
    log.warning(
        "eecontrol: %d progress bars configured; using %s (the last listed), leaving out %s.",
        len(bars),
        type(keep).__name__,
        ", ".join(type(b).__name__ for b in bars[:-1]),
    )
    return [cb for cb in callbacks if not isinstance(cb, ProgressBar) or cb is keep]


def _lightning_logs_to_file() -> None:
    """Sends Lightning's and eecontrol's messages to Hydra's ``train.log`` too.

    Lightning's logger does not propagate to the root logger, where Hydra's job logging
    puts its file handler; without this, ``train.log`` holds only the root's messages.
    """
    lightning_log = logging.getLogger("lightning.pytorch")
    if lightning_log.propagate:
        return  # Lightning's messages already reach the root's handlers
    root_files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    for handler in [h for h in lightning_log.handlers if isinstance(h, logging.FileHandler)]:
        if handler not in root_files:  # the previous job's train.log in a multirun
            lightning_log.removeHandler(handler)
    for handler in root_files:
        if handler not in lightning_log.handlers:
            lightning_log.addHandler(handler)


def finish_wandb() -> None:
    """Ends the active W&B run, so that the jobs of a multirun never merge."""
    try:
        import wandb
    except ImportError:  # pragma: no cover - wandb is a dependency
        return
    if wandb.run is not None:
        wandb.finish()


def train(cfg: DictConfig) -> tuple[dict[str, float], pl.Trainer]:
    """Builds the data, model, callbacks, loggers and trainer from ``cfg``; fits and tests.

    Args:
        cfg: the composed ``train.yaml`` config.

    Returns:
        The trainer's callback metrics (floats) after fit and test, and the trainer.
    """
    if cfg.get("optimized_mode") not in (None, "max", "min"):
        raise ValueError(
            f"`optimized_mode` must be one of ['max', 'min'] or null, got {cfg.optimized_mode!r}."
        )
    if cfg.get("optimized_metric") and cfg.get("optimized_mode"):
        check_monitor_mode("optimized_mode", cfg.optimized_metric, cfg.optimized_mode)
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    os.environ.setdefault("WANDB_SILENT", "true")
    _lightning_logs_to_file()
    # before anything is instantiated: instantiation resolves interpolations in place, and
    # the secrets read with ${oc.env:...} are found from the unresolved config
    hparams = redact_secrets(  # no URL password, no secret read from the environment
        OmegaConf.to_container(cfg, resolve=True), env_secrets(OmegaConf.to_yaml(cfg))
    )

    for group in ("data", "model"):
        if isinstance(cfg.get(group), DictConfig) and "_target_" in cfg[group]:
            check_bool_options(cfg[group], group)
    # _convert_="all": a model's save_hyperparameters stores plain containers, never omegaconf
    # objects (a checkpoint holding one does not load with weights_only=True)
    datamodule: pl.LightningDataModule = hydra.utils.instantiate(cfg.data, _convert_="all")
    model: pl.LightningModule = hydra.utils.instantiate(cfg.model, _convert_="all")
    callbacks: list[Callback] = _one_progress_bar(
        _instantiate_group(cfg.get("callbacks"), "callbacks", Callback)
    )
    callbacks += pruning_callbacks(cfg, callbacks)  # a job of an eecontrol_optuna sweep
    loggers: list[Logger] = _instantiate_group(cfg.get("logger"), "logger", Logger)
    trainer: pl.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False
    )
    if cfg.get("train", True) and cfg.get("optimized_metric"):
        trainer.callbacks.append(_OptimizedMetricCheck(str(cfg.optimized_metric)))
    lock = RunLock(trainer.default_root_dir) if trainer.is_global_zero else None
    if lock is not None:
        lock.acquire()  # one writer per run directory (a second resume gets a clear error)
    try:
        for lg in loggers:
            lg.log_hyperparams(hparams)  # type: ignore[arg-type]
        metrics = _fit_and_test(cfg, trainer, model, datamodule, loggers)
    finally:
        finish_wandb()
        if lock is not None:
            lock.release()
    return metrics, trainer


def _fit_and_test(
    cfg: DictConfig,
    trainer: pl.Trainer,
    model: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    loggers: list[Logger],
) -> dict[str, float]:
    if cfg.get("train", True):
        ckpt_path = _checkpoint_path(cfg.get("ckpt_path"), Path(trainer.default_root_dir))
        saved: dict[str, Any] = {}
        if ckpt_path is not None and "://" not in ckpt_path:
            info = describe_checkpoint(Path(ckpt_path))  # a one-line error if not loadable
            saved = _resumable_state(Path(ckpt_path))
            for lg in loggers:  # rows logged after the checkpoint are logged again
                if isinstance(lg, ResumableCSVLogger):
                    lg.truncate(info["global_step"], saved.get("eecontrol_pending_row"))
        # weights_only=True: a checkpoint (local or a URL) can never run code when loaded
        try:
            trainer.fit(model=model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        except ValueError as err:
            if trainer.global_step == 0 and _raised_by_eecontrol(err):
                raise SetUpError(str(err)) from err  # one line, before training (GradES on a CNN)
            raise
        _restore_metrics(trainer, saved.get("eecontrol_metrics") or {})
    train_metrics = dict(trainer.callback_metrics)
    if cfg.get("test", False):
        trainer.test(model=model, datamodule=datamodule, verbose=False)
    metrics = {k: float(v) for k, v in {**train_metrics, **trainer.callback_metrics}.items()}
    if trainer.is_global_zero:
        finalize_run(trainer, metrics, cfg.get("optimized_metric"), cfg.get("optimized_mode"))
    return metrics


def _resumable_state(path: Path) -> dict[str, Any]:
    """The :class:`ResumableCheckpoint` state in a checkpoint (empty if absent).

    Read from the file, not from the restored callback: Lightning restores a callback's
    state only under the same state key, which holds the checkpoint directory (a run
    directory copied elsewhere has another).
    """
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    for key, state in (ckpt.get("callbacks") or {}).items():
        if str(key).startswith(ResumableCheckpoint.__name__) and isinstance(state, dict):
            return state
    return {}


def _restore_metrics(trainer: pl.Trainer, saved: dict[str, float]) -> None:
    """Fills the metrics a resumed fit did not log again from the checkpoint.

    A run killed after its last epoch (during test or report) resumes with nothing left to
    train, so ``trainer.callback_metrics`` would miss ``val/...`` (and ``optimized_metric``);
    the values at the checkpoint are the uninterrupted run's.
    """
    import torch

    for key, value in saved.items():
        if key not in trainer.callback_metrics:
            trainer.callback_metrics[key] = torch.tensor(value)


def _checkpoint_path(value: Any, run_dir: Path) -> str | None:
    """Resolves ``ckpt_path``: None, a file, or ``last`` (this run directory's last.ckpt).

    Raises:
        FileNotFoundError: naming ``ckpt_path`` when the file (or this run's last.ckpt) is
            missing, instead of Lightning's warning and a silent fresh start.
    """
    if value is None:
        return None
    value = str(value)
    if value == "last":
        last = run_dir / CHECKPOINT_DIR / LAST
        if not last.is_file():
            raise FileNotFoundError(
                f"`ckpt_path=last`: this run directory has no {CHECKPOINT_DIR}/{LAST} ({last}). "
                f"To continue an earlier run in its own directory use `resume=<run dir>` or "
                f"`resume=last`."
            )
        return str(last)
    if "://" not in value and not Path(value).is_file():
        raise FileNotFoundError(f"`ckpt_path={value}`: no such checkpoint file.")
    return value


def finalize_run(
    trainer: pl.Trainer,
    metrics: dict[str, float],
    optimized_metric: str | None,
    optimized_mode: str | None = None,
) -> None:
    """Writes summary.json and the report (plots + HTML), then publishes them to W&B."""
    out = Path(trainer.default_root_dir)
    summary = run_summary(trainer, metrics, optimized_metric, optimized_mode)
    if optimized_metric:  # `objective` is what the sweeper receives (see hydra_main)
        summary["last_value"] = metrics.get(optimized_metric)
        summary["objective"] = sweeper_value(trainer, metrics, optimized_metric)
    write_summary(out, summary)
    for lg in trainer.loggers:  # flush the CSV so the report sees every row
        lg.save()
    try:
        _, plots, _ = report_run(out)
    except Exception as err:  # the run's results are on disk: a report error only warns
        log.warning("eecontrol: the report of %s failed (%s: %s)", out, type(err).__name__, err)
        plots = []
    publish_to_wandb(trainer, all_decisions(trainer), summary, plots)


def sweeper_value(trainer: pl.Trainer, metrics: dict[str, float], name: str) -> float | None:
    """The value a sweeper receives for ``name``: the last one, or a stopping callback's best.

    A run that a callback monitoring ``name`` stopped early returns its best value so far.
    """
    for cb in control_callbacks(trainer):
        best = getattr(cb, "best_so_far", None)
        if cb.stop_reason is not None and getattr(cb, "monitor", None) == name and best is not None:
            return float(best)
    return metrics.get(name)


def _report(cfg: DictConfig, metrics: dict[str, float], trainer: pl.Trainer) -> None:
    """Prints the decisions table, key metrics and where the run's files are."""
    out = Path(trainer.default_root_dir)
    print_decisions(all_decisions(trainer))
    csv_files = sorted(out.glob("csv/version_*/metrics.csv"))
    wandb_runs = sorted(out.glob("wandb/offline-run-*")) + sorted(out.glob("wandb/run-*"))
    print_run_paths(
        run_dir=out,
        decisions=out / DECISIONS_FILE,
        report=out / "report" / "report.html",
        csv=csv_files[-1] if csv_files else None,
        wandb_run=wandb_runs[-1] if wandb_runs else None,
        metrics={k: v for k, v in metrics.items() if "/" in k and "eecontrol/" not in k},
    )


# errors that end a run with one line on stderr (no traceback): the message says it all
class SetUpError(ValueError):
    """An eecontrol callback refused the model or the set-up before the first training step."""


def _raised_by_eecontrol(err: BaseException) -> bool:
    """Whether ``err`` was raised in eecontrol's callbacks or core (its checks of the set-up),
    not in the user's model or data code (whose errors keep their traceback)."""
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    here = Path(tb.tb_frame.f_code.co_filename).resolve()
    package = Path(__file__).resolve().parent.parent
    return any(here.is_relative_to(package / part) for part in ("callbacks", "core"))


_ONE_LINE_ERRORS = (
    CheckpointWriteError,
    UnsafeRunDirError,
    RunLockedError,
    ResumeError,
    SetUpError,
)


def _one_line_error(err: BaseException) -> BaseException | None:
    seen = err
    while seen is not None:
        if isinstance(seen, _ONE_LINE_ERRORS):
            return seen
        seen = seen.__cause__ or seen.__context__  # type: ignore[assignment]
    return None


def run_job(cfg: DictConfig) -> float | None:
    """Runs ``train`` for one Hydra job and returns the optimised metric to the sweeper.

    The body of :func:`eecontrol.app.train.hydra_main` (which imports this module only when
    a job runs, so that ``eecontrol-train --help`` imports no Lightning).
    """
    silence_third_party_noise()  # here, so that sweep jobs in worker processes are quiet too
    _redact_log_records()  # also in a launcher's worker process (joblib, submitit)
    redact_hydra_files()
    # what W&B and other tools record as the command line: without credentials (the
    # config has been composed from the real values already)
    sys.argv = [redact_text(a, env_secrets(a)) for a in sys.argv]
    try:
        metrics, trainer = train(cfg)
    except ModuleNotFoundError as err:  # an optional package: say which extra installs it
        raise explain_missing_module(err) from err
    except Exception as err:
        known = _one_line_error(err)
        if known is None:
            raise
        log.error("eecontrol-train: %s", redact_text(str(known)))
        print(f"eecontrol-train: {redact_text(str(known))}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    if trainer.is_global_zero:
        _report(cfg, metrics, trainer)
    name = cfg.get("optimized_metric")
    if not name:
        return None
    if name not in metrics:
        raise KeyError(
            f"`optimized_metric={name}` was not logged; available metrics: {sorted(metrics)}."
        )
    value = sweeper_value(trainer, metrics, name)  # summary.json's `objective` too
    record_objective(cfg, value)  # a sweep job: the result survives a lost launcher return
    return value
