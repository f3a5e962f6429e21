"""``GradES``: freeze each transformer matrix once its gradient is small; stop when all are.

The Lightning adapter: hooks, decisions and logs. The math is in :mod:`eecontrol.core.grades`;
set-up checks and reports in ``_grades_setup.py``; progress, state and the timeline in
``_grades_state.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from eecontrol.callbacks._control import (
    log_every_n,
    plan_step,
    plan_unit,
    planned_steps,
)
from eecontrol.callbacks._grades_log import (
    log_histogram,
    log_metrics,
)
from eecontrol.callbacks._grades_setup import (
    MIN_COVERAGE,
    check_arguments,
    check_unwrapped,
    describe_setup,
    gather_on,
    is_fsdp,
    is_sharded,
)
from eecontrol.callbacks._grades_setup import strategy_problem as _strategy_problem
from eecontrol.callbacks._grades_state import TIMELINE_FILE, GradESState
from eecontrol.core.grades import (
    AUTO,
    compile_patterns,
    freeze_parameters,
    named_parameters,
)

__all__ = ["MIN_COVERAGE", "TIMELINE_FILE", "GradES", "_strategy_problem"]


class GradES(GradESState):
    """Freezes each weight matrix once its gradient statistic is small; stops when all are.

    GradES (Wen et al., "GradES: Significantly Faster Training in Transformers with
    Gradient-Based Early Stopping", arXiv 2509.01842). Every ``interval`` optimizer steps
    the statistic of every unfrozen component is read in ``on_before_optimizer_step``
    (gradients accumulated and unscaled; with automatic optimization not yet clipped by
    ``gradient_clip_val``, with manual optimization as ``optimizer.step()`` receives them,
    i.e. after any ``self.clip_gradients`` in ``training_step``) in one fused reduction;
    after the grace period a component whose statistic is below its threshold is frozen
    (``requires_grad_(False)``, ``grad = None``, optimizer state dropped), so its
    weight-gradient GEMMs and optimizer updates stop. Training stops when the frozen
    fraction of components reaches ``max_frozen_ratio``.

    Steps are optimizer steps (``global_step``), the unit of
    ``trainer.estimated_stepping_batches``; under manual optimization they are training
    batches, since ``global_step`` there advances once per ``optimizer.step()`` call. With
    several optimizers each component is read once per batch, at the step of the optimizer
    that holds it. Frozen fraction and trainable fraction go to the loggers once per
    optimizer step at their cadence (``log_every_n_steps``), not per micro-batch.

    Distributed: under DDP (``find_unused_parameters=True``) rank 0's readings are
    broadcast; under FSDP (``use_orig_params=True``) each rank sums its pieces of every
    matrix and the ranks' partial sums are added, so all ranks read the full matrices
    and decide alike (docs/grades.md, "Distributed training").

    Example::

        trainer = L.Trainer(max_epochs=3, callbacks=[GradES(tau="auto", rel_tau=0.3)])

    Args:
        tau: threshold: a number >= 0 (freeze when statistic < tau, as in the paper),
            ``"auto"`` (freeze when the smoothed statistic < ``rel_tau`` x the component's
            mean reading over the second half of the grace period), or a dict mapping
            component patterns (and ``"default"``) to either.
        statistic: ``grad_l1`` (sum |dL/dW|, paper v1), ``grad_delta_l1`` (sum
            |g_t - g_{t-1}|, paper v3) or ``weight_delta_l1`` (sum |W_t - W_{t-interval}|,
            what the reference code computes).
        normalize: ``sum`` or ``mean`` (per weight, comparable across matrix sizes).
        interval: optimizer steps between readings, >= 1.
        grace: no freezing before this fraction of ``trainer.estimated_stepping_batches``,
            in [0, 1).
        max_frozen_ratio: stop training once this fraction of components is frozen, in
            (0, 1].
        rel_tau: the fraction of the reference used by ``tau="auto"``, in (0, 1].
        smoothing: EMA factor in [0, 1) applied to readings before the comparison; None:
            0 (the raw reading) for numeric thresholds, 0.9 for ``"auto"``.
        patterns: None (default): every weight matrix inside the model's repeated blocks,
            found by structure (attention and MLP matrices under any name, packed MoE
            experts and MHA projections; never embeddings, norms or task heads). Or name
            patterns selecting the components: dotted suffixes (``attention.self.query``),
            globs (``*.mlp.fc?``) or regexes (``re:...``). LoRA A/B pairs are one
            component. The set-up report (console, ``decisions.jsonl``, loggers) says what
            is watched and left out; under 90% of the blocks' weight matrices is a
            warning, none of them an error.
        log_components: send each component's statistic to the loggers at every reading
            that falls on ``trainer.log_every_n_steps`` (to W&B also a histogram of all
            components' ``log10`` statistic, ``grades/<statistic>/log10_histogram``).
        prog_bar: show the frozen fraction in Lightning's progress bar (sent when it
            changes; eecontrol's progress bars show the frozen count anyway).
    """

    def __init__(
        self,
        tau: float | str | Mapping[str, float | str] = AUTO,
        statistic: str = "grad_l1",
        normalize: str = "sum",
        interval: int = 1,
        grace: float = 0.3,
        max_frozen_ratio: float = 1.0,
        rel_tau: float = 0.3,
        smoothing: float | None = None,
        patterns: Sequence[str] | None = None,
        log_components: bool = True,
        prog_bar: bool = True,
    ) -> None:
        super().__init__()
        checked = check_arguments(
            tau, statistic, normalize, interval, grace, max_frozen_ratio, rel_tau, smoothing
        )
        if patterns is not None:
            compile_patterns(patterns)
        self.tau, self.statistic, self.normalize = checked["tau"], statistic, normalize
        self.interval = int(interval)
        self.grace = float(grace)
        self.max_frozen_ratio = float(max_frozen_ratio)
        self.rel_tau = float(rel_tau)
        self.smoothing = float(checked["smoothing"])
        self.patterns = None if patterns is None else list(patterns)
        self.log_components = bool(log_components)
        self.prog_bar = bool(prog_bar)
        self._uses_auto = bool(checked["uses_auto"])

    # --- set-up ---------------------------------------------------------------------

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        problem = _strategy_problem(trainer.strategy)
        if problem is not None:
            raise ValueError(problem)
        # Components are found in on_fit_start, after a checkpoint's frozen set is restored;
        # under FSDP now, before it flattens and shards the parameters.
        self._setup_module = pl_module
        self._sharded = is_sharded(trainer.strategy)
        if is_fsdp(trainer.strategy):
            check_unwrapped(pl_module)
            self._discover(pl_module)

    def _report_setup(self, trainer: pl.Trainer) -> None:
        """The set-up report: console, ``decisions.jsonl`` and loggers (once per run)."""
        assert self._coverage is not None
        reason, evidence, warning = describe_setup(self._coverage, self._components, self.patterns)
        if warning is not None:
            rank_zero_warn(warning)
        if any(d.action == "setup" for d in self._decisions) and self.fit_kind != "continued":
            return  # a resumed run keeps its original report
        evidence.update(
            total_steps=self._total_steps,
            grace_step=int(self.grace * self._total_steps),
            unit=plan_unit(trainer),
        )
        self._decide(trainer, "setup", reason, evidence)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        self._total_steps = planned_steps(trainer, "GradES (to place the grace period)")
        self._owner = {}
        self._read_at_step = set()
        self._bar_frozen = -1
        if not is_fsdp(trainer.strategy):
            self._discover(pl_module)
        self._report_setup(trainer)
        self._grace_step = int(self.grace * self._total_steps)
        self._start_step = (
            0
            if self._uses_auto
            else max(0, (self._grace_step // self.interval - 1) * self.interval)
        )
        # Frozen parameters go before the first step (DDP has already wrapped the model).
        self._apply_restored(trainer, pl_module)
        self._compile_cost(pl_module)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The optimizer state was restored after on_fit_start: drop frozen params' state again.
        params = named_parameters(pl_module)
        for info in self._frozen.values():
            freeze_parameters((params[n] for n in info["params"]), trainer.optimizers)
        if self._names and self.frozen_fraction >= self.max_frozen_ratio:
            self._stop_due = True
        self._write_timeline(trainer)

    # --- the check ------------------------------------------------------------------

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self._stats is None or self._rule is None:
            return  # only after setup
        step = plan_step(trainer)
        if step != self._last_step:
            self._last_step = step
            self._read_at_step = set()
            if trainer.loggers and step % log_every_n(trainer) == 0:
                self._log_fractions(trainer)
        if step < self._start_step - 1:
            return
        owned = self._owned_by(trainer, optimizer)
        active = [
            i
            for i, n in enumerate(self._names)
            if n not in self._frozen
            and i not in self._read_at_step
            and (owned is None or i in owned)
        ]
        self._read_at_step.update(active)  # once per step, several optimizers included
        if not active:
            return
        if step >= self._start_step and step % self.interval == 0:
            refresh = self._stats.snapshot_due(step, self.interval)
            if self._sharded:  # every rank adds all ranks' partial sums of its pieces
                values = self._stats.read(active, refresh, gather=gather_on(trainer))
            else:
                values = self._stats.read(active, refresh)
            if trainer.world_size > 1 and not self._sharded:  # identical decisions everywhere
                values = trainer.strategy.broadcast(values, src=0)
            self._decide_on(trainer, pl_module, step, active, values)
            active = [i for i in active if self._names[i] not in self._frozen]
        if self._stats.snapshot_due(step, self.interval):
            self._stats.snapshot(active)

    def _decide_on(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        step: int,
        active: list[int],
        values: list[float | None],
    ) -> None:
        assert self._rule is not None and self._stats is not None
        self._last_values.update({self._names[i]: v for i, v in zip(active, values)})
        to_freeze: list[tuple[int, float, float]] = []
        missing: list[str] = []
        for idx, value in zip(active, values):
            if value is None and step >= self._grace_step:
                missing.append(self._names[idx])
            if self._rule.update(idx, value, step, self._grace_step):
                smoothed = self._rule.smoothed(idx)
                threshold = self._rule.threshold(idx)
                assert smoothed is not None and threshold is not None
                to_freeze.append((idx, smoothed, threshold))
        if missing:
            self._warn_failures(step)
        if self.log_components and trainer.loggers and step % log_every_n(trainer) == 0:
            metrics = {
                f"grades/{self.statistic}/{self._names[i]}": v
                for i, v in zip(active, values)
                if v is not None
            }
            log_metrics(trainer, metrics)
            log_histogram(
                trainer, self.statistic, list(self._last_values.values()), trainer.global_step
            )
        for idx, smoothed, threshold in to_freeze:
            comp = self._components[idx]
            lr, numel = self._freeze(trainer, idx, step, smoothed, threshold)
            self._decide(
                trainer,
                "freeze",
                f"{comp.name}: {self.statistic} {smoothed:.4g} < tau {threshold:.4g}",
                {
                    "component": comp.name,
                    "statistic": smoothed,
                    "tau": threshold,
                    "lr": lr,
                    "params": numel,
                    "frozen_fraction": self.frozen_fraction,
                    "trainable_fraction": self.trainable_fraction,
                },
            )
        if to_freeze:
            self._write_timeline(trainer)
            if trainer.loggers:
                self._log_fractions(trainer)
            if self.frozen_fraction >= self.max_frozen_ratio:
                self._stop_due = True

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *_: Any
    ) -> None:  # outputs, batch and batch_idx are not needed
        if not self._names:
            return
        if self.prog_bar and len(self._frozen) != self._bar_frozen:
            self._bar_frozen = len(self._frozen)  # sent when it changes, not per micro-batch
            pl_module.log(
                "grades/frozen_fraction",
                self.frozen_fraction,
                logger=False,
                prog_bar=True,
                batch_size=1,
            )
        if self._stop_due and self.stopped_epoch is None:
            self._stop_due = False
            self._stop(
                trainer,
                True,
                f"{len(self._frozen)}/{len(self._names)} components frozen "
                f"(>= max_frozen_ratio {self.max_frozen_ratio})",
                {
                    "frozen_fraction": self.frozen_fraction,
                    "trainable_fraction": self.trainable_fraction,
                    "total_steps": self._total_steps,
                },
            )

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write_timeline(trainer)
