"""``GradES``: freeze each transformer matrix once its gradient is small; stop when all are."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from eecontrol.callbacks._control import (
    ControlCallback,
    check_choice,
    check_range,
    is_compiled,
    log_every_n,
    plan_step,
    plan_unit,
    planned_steps,
    recompile_limit,
    run_dir,
)
from eecontrol.core.gradstats import (
    AUTO,
    NO_GRADIENT,
    NORMALIZE,
    NOT_FINITE,
    STATISTICS,
    Component,
    Coverage,
    FreezeRule,
    GradStatistic,
    check_tau,
    compile_patterns,
    coverage,
    find_components,
    freeze_parameters,
    resolve_taus,
)

TIMELINE_FILE = "grades_timeline.json"

#: Below this fraction of the blocks' weight matrices watched, the set-up report warns.
MIN_COVERAGE = 0.9


def _strategy_problem(strategy: Any) -> str | None:
    """Returns why GradES cannot run under ``strategy`` (with the fix), or None."""
    name = type(strategy).__name__
    if "FSDP" in name or "DeepSpeed" in name or "ModelParallel" in name:
        return (
            f"GradES does not support {name}: sharded strategies flatten and shard parameters, "
            f"so single weight matrices cannot be frozen one by one mid-run. Use "
            f"strategy='ddp_find_unused_parameters_true' (or a single device)."
        )
    from lightning.pytorch.strategies import DDPStrategy

    if isinstance(strategy, DDPStrategy):
        kwargs = dict(getattr(strategy, "_ddp_kwargs", {}) or {})
        spawn = getattr(strategy, "_start_method", "popen")
        registered = {"popen": "ddp", "spawn": "ddp_spawn", "fork": "ddp_fork"}.get(spawn, "ddp")
        if kwargs.get("static_graph"):
            return (
                "GradES changes which parameters receive gradients during training, which DDP "
                "with static_graph=True forbids. Use "
                f"Trainer(strategy='{registered}_find_unused_parameters_true') or "
                "DDPStrategy(find_unused_parameters=True, static_graph=False)."
            )
        if not kwargs.get("find_unused_parameters"):
            return (
                "GradES freezes parameters mid-run, so DDP must be told that some parameters "
                "get no gradient: use "
                f"Trainer(strategy='{registered}_find_unused_parameters_true') or "
                "Trainer(strategy=DDPStrategy(find_unused_parameters=True)) (Hydra: "
                f"trainer.strategy={registered}_find_unused_parameters_true)."
            )
    return None


class GradES(ControlCallback):
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
        self.tau = check_tau(tau)
        self.statistic = check_choice("statistic", statistic, STATISTICS)
        self.normalize = check_choice("normalize", normalize, NORMALIZE)
        check_range("interval", interval, low=1, integer=True)
        check_range("grace", grace, low=0.0, high=1.0, high_inclusive=False)
        check_range("max_frozen_ratio", max_frozen_ratio, low=0.0, high=1.0, low_inclusive=False)
        check_range("rel_tau", rel_tau, low=0.0, high=1.0, low_inclusive=False)
        uses_auto = self.tau == AUTO or (isinstance(self.tau, dict) and AUTO in self.tau.values())
        if smoothing is None:
            smoothing = 0.9 if uses_auto else 0.0
        check_range("smoothing", smoothing, low=0.0, high=1.0, high_inclusive=False)
        if uses_auto and grace == 0:
            raise ValueError(
                "`grace` must be in (0.0, 1.0) with tau='auto' (the reference is measured "
                f"during the grace period), got {grace!r}."
            )
        if patterns is not None:
            compile_patterns(patterns)
        self.interval = int(interval)
        self.grace = float(grace)
        self.max_frozen_ratio = float(max_frozen_ratio)
        self.rel_tau = float(rel_tau)
        self.smoothing = float(smoothing)
        self.patterns = None if patterns is None else list(patterns)
        self.log_components = bool(log_components)
        self.prog_bar = bool(prog_bar)
        self._uses_auto = uses_auto
        # progress (survives a resume)
        self._frozen: dict[str, dict[str, Any]] = {}
        self._pending_state: dict[str, Any] = {}
        # per fit
        self._components: list[Component] = []
        self._names: list[str] = []
        self._stats: GradStatistic | None = None
        self._rule: FreezeRule | None = None
        self._grace_step = 0
        self._start_step = 0
        self._total_steps = 0
        self._total_params = 0
        self._trainable_at_start = 0
        self._last_values: dict[str, float | None] = {}
        self._last_step = -1
        self._read_at_step: set[int] = set()
        self._owner: dict[int, set[int]] = {}
        self._bar_frozen = -1
        self._stop_due = False
        self._warned: set[str] = set()
        self._coverage: Coverage | None = None
        self._setup_module: pl.LightningModule | None = None

    # --- identity -------------------------------------------------------------------

    @override
    def _config(self) -> dict[str, Any]:
        return {
            "tau": self.tau,
            "statistic": self.statistic,
            "normalize": self.normalize,
            "interval": self.interval,
            "grace": self.grace,
            "max_frozen_ratio": self.max_frozen_ratio,
            "rel_tau": self.rel_tau,
            "smoothing": self.smoothing,
            "patterns": None if self.patterns is None else list(self.patterns),
        }

    @override
    def _identity(self) -> dict[str, Any]:
        tau = self.tau if not isinstance(self.tau, dict) else json.dumps(self.tau, sort_keys=True)
        return {"statistic": self.statistic, "normalize": self.normalize, "tau": tau}

    # --- what the user reads --------------------------------------------------------

    @property
    def components(self) -> list[str]:
        """Names of the watched components (after ``setup``)."""
        return list(self._names)

    @property
    def frozen(self) -> dict[str, int]:
        """Frozen components and the optimizer step at which each was frozen."""
        return {name: int(info["step"]) for name, info in self._frozen.items()}

    @property
    def frozen_fraction(self) -> float:
        """Fraction of components frozen (0 before ``setup``)."""
        return len(self._frozen) / len(self._names) if self._names else 0.0

    @property
    def trainable_fraction(self) -> float:
        """Fraction of the model's parameters (scalars) still trainable."""
        if not self._total_params:
            return 1.0
        frozen = sum(int(info["numel"]) for info in self._frozen.values())
        return (self._trainable_at_start - frozen) / self._total_params

    @property
    def last_values(self) -> dict[str, float | None]:
        """The latest reading of every unfrozen component (``None``: no reading)."""
        return dict(self._last_values)

    @override
    def progress_fields(self) -> dict[str, str]:
        if not self._names:
            return {}
        return {"frozen": f"{len(self._frozen)}/{len(self._names)}"}

    @override
    def summary(self) -> dict[str, Any]:
        out = super().summary()
        out["GradES/frozen_fraction"] = self.frozen_fraction
        out["GradES/frozen_components"] = len(self._frozen)
        out["GradES/components"] = len(self._names)
        out["GradES/trainable_fraction"] = self.trainable_fraction
        return out

    # --- set-up ---------------------------------------------------------------------

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        problem = _strategy_problem(trainer.strategy)
        if problem is not None:
            raise ValueError(problem)
        # Components are found in on_fit_start, after a checkpoint's frozen set is restored.
        self._setup_module = pl_module

    def _discover(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Finds the components (the restored frozen set included) and reports coverage."""
        frozen_params = [n for info in self._frozen.values() for n in info["params"]]
        self._components = find_components(pl_module, self.patterns, keep=frozen_params)
        self._names = [c.name for c in self._components]
        taus = resolve_taus(self.tau, self._components)
        self._stats = GradStatistic(self._components, self.statistic, self.normalize)
        self._rule = FreezeRule(taus, self.rel_tau, self.smoothing)
        self._total_params = sum(p.numel() for p in pl_module.parameters())
        kept = set(frozen_params)
        self._trainable_at_start = sum(
            p.numel() for n, p in pl_module.named_parameters() if p.requires_grad or n in kept
        )
        self._coverage = coverage(pl_module, self._components, keep=frozen_params)
        self._report_setup(trainer)

    def _report_setup(self, trainer: pl.Trainer) -> None:
        """The set-up report: console, ``decisions.jsonl`` and loggers (once per run)."""
        cov = self._coverage
        assert cov is not None
        watched = sum(c.numel for c in self._components)
        matrices = cov.left_out_matrices()
        left = "; ".join(f"{n} ({k:,}, {why})" for n, k, why in matrices[:20])
        if len(matrices) > 20:
            left += f"; ... and {len(matrices) - 20} more"
        frac = cov.matrix_fraction
        lists = ", ".join(f"{n or '<model>'} ({k} blocks)" for n, k in cov.block_lists)
        where = (
            f"{frac:.1%} of the weight matrices of {lists}"
            if frac is not None
            else "no repeated blocks found, so coverage cannot be measured"
        )
        reason = (
            f"watching {len(self._components)} components ({watched:,} weights): {where}; "
            f"left out: {left or 'no weight matrix'}"
            + (f"; outside the blocks: {cov.outside[:10]}" if cov.outside else "")
            + (
                f"; {cov.frozen_before:,} block weights were frozen before fit"
                if cov.frozen_before
                else ""
            )
        )
        if frac is not None and cov.matrix_covered == 0:
            raise ValueError(
                f"GradES watches none of the weight matrices of the model's repeated blocks "
                f"({lists}); `patterns` {self.patterns} select only {cov.outside[:10]}. Leave "
                f"`patterns` unset to watch every block matrix."
            )
        if frac is not None and frac < MIN_COVERAGE:
            rank_zero_warn(
                f"GradES watches only {frac:.1%} of the weight matrices of the repeated blocks "
                f"(< {MIN_COVERAGE:.0%}); the rest keeps training after the run reports all "
                f"components frozen. Left out: {left}."
            )
        if any(d.action == "setup" for d in self._decisions) and self.fit_kind != "continued":
            return  # a resumed run keeps its original report
        self._decide(
            trainer,
            "setup",
            reason,
            {
                "components": len(self._components),
                "watched_params": watched,
                "block_lists": lists,
                "blocks": sum(k for _, k in cov.block_lists),
                "matrix_coverage": frac,
                "block_param_coverage": cov.block_fraction,
                "left_out_matrices": len(matrices),
                "left_out_params": sum(k for _, k, _ in cov.left_out),
                "left_out": left,
                "outside_blocks": ", ".join(cov.outside),
                "frozen_before_fit": cov.frozen_before,
                "discovery": "structure" if self.patterns is None else "patterns",
                "total_steps": self._total_steps,
                "grace_step": int(self.grace * self._total_steps),
                "unit": plan_unit(trainer),
            },
        )

    def _apply_restored(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Applies checkpointed progress: statistics state and the frozen set."""
        assert self._stats is not None and self._rule is not None
        state, self._pending_state = self._pending_state, {}
        if state:
            self._rule.load_state_dict(state.get("rule") or {}, self._names)
            self._stats.load_state_dict(state.get("snapshots") or {})
            self._last_step = int(state.get("last_step", -1))
        params = dict(pl_module.named_parameters())
        missing = [n for info in self._frozen.values() for n in info["params"] if n not in params]
        if missing:
            raise ValueError(
                f"GradES: the checkpoint froze parameters that this model does not have: "
                f"{missing[:10]}; resume with the model the checkpoint was written by."
            )
        for info in self._frozen.values():
            freeze_parameters((params[n] for n in info["params"]), trainer.optimizers)
        self._stats.clear(i for i, n in enumerate(self._names) if n in self._frozen)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        self._total_steps = planned_steps(trainer, "GradES (to place the grace period)")
        self._owner = {}
        self._read_at_step = set()
        self._bar_frozen = -1
        self._discover(trainer, pl_module)
        self._grace_step = int(self.grace * self._total_steps)
        self._start_step = (
            0
            if self._uses_auto
            else max(0, (self._grace_step // self.interval - 1) * self.interval)
        )
        # Frozen parameters go before the first step (DDP has already wrapped the model).
        self._apply_restored(trainer, pl_module)
        self._compile_cost(pl_module)

    def freeze_steps_bound(self) -> int:
        """The most optimizer steps at which components can still freeze in this run."""
        readings = math.ceil(max(self._total_steps - self._grace_step, 0) / self.interval)
        return min(len(self._names) - len(self._frozen), readings)

    def _compile_cost(self, pl_module: pl.LightningModule) -> None:
        """Under ``torch.compile``: says how many recompiles freezing can cost.

        torch guards on ``requires_grad`` of every parameter, so each step at which
        components freeze compiles the model once more (measured with ``aot_eager``); past
        torch's ``recompile_limit`` the model silently runs eagerly. ``interval`` bounds
        the steps at which freezing can happen.
        """
        if not is_compiled(pl_module):
            return
        bound = self.freeze_steps_bound()
        limit = recompile_limit()
        message = (
            f"GradES under torch.compile: freezing changes requires_grad, which torch "
            f"guards on, so each step at which components freeze compiles the model once "
            f"more: at most {bound} recompiles in this run ({len(self._names)} components, "
            f"a reading every {self.interval} step(s) after the grace step {self._grace_step} "
            f"of {self._total_steps})."
        )
        if bound + 1 >= limit:
            needed = max(math.ceil((self._total_steps - self._grace_step) / (limit - 2)), 1)
            rank_zero_warn(
                f"{message} torch's recompile_limit is {limit}: past it the model runs "
                f"eagerly. Raise it (torch._dynamo.config.recompile_limit = {bound + 2}) or "
                f"set interval >= {needed} so that freezes fall on at most {limit - 2} steps."
            )
        else:
            rank_zero_info(message)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The optimizer state was restored after on_fit_start: drop frozen params' state again.
        params = dict(pl_module.named_parameters())
        for info in self._frozen.values():
            freeze_parameters((params[n] for n in info["params"]), trainer.optimizers)
        if self._names and self.frozen_fraction >= self.max_frozen_ratio:
            self._stop_due = True
        self._write_timeline(trainer)

    # --- the check ------------------------------------------------------------------

    def _lr_of(self, trainer: pl.Trainer, comp: Component) -> float | None:
        first = comp.params[0]
        for opt in trainer.optimizers:
            for group in opt.param_groups:
                if any(p is first for p in group["params"]):
                    return float(group["lr"])
        return None

    def _owned_by(self, trainer: pl.Trainer, optimizer: torch.optim.Optimizer) -> set[int] | None:
        """Components read at ``optimizer``'s step: all (one optimizer), or those it holds.

        With several optimizers (manual optimization) a component is read at the step of
        the optimizer that holds its parameters, after that optimizer's backward; one held
        by none is read at the first optimizer's step.
        """
        optimizers = [getattr(o, "_optimizer", o) for o in trainer.optimizers]
        optimizer = getattr(optimizer, "_optimizer", optimizer)
        if len(optimizers) <= 1:
            return None
        if not self._owner:
            where = {
                id(p): k
                for k, opt in enumerate(optimizers)
                for group in opt.param_groups
                for p in group["params"]
            }
            self._owner = {k: set() for k in range(len(optimizers))}
            for i, comp in enumerate(self._components):
                self._owner[where.get(id(comp.params[0]), 0)].add(i)
        index = next((k for k, o in enumerate(optimizers) if o is optimizer), None)
        return self._owner.get(index, set()) if index is not None else None

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
            values = self._stats.read(active, refresh=self._stats.snapshot_due(step, self.interval))
            if trainer.world_size > 1:  # identical decisions on every rank
                values = trainer.strategy.broadcast(values, src=0)
            self._decide_on(trainer, pl_module, step, active, values)
            active = [i for i in active if self._names[i] not in self._frozen]
        if self._stats.snapshot_due(step, self.interval):
            self._stats.snapshot(active)

    def _log_fractions(self, trainer: pl.Trainer) -> None:
        """Frozen and trainable fraction to the loggers (not through ``pl_module.log``)."""
        metrics = {
            "grades/frozen_fraction": self.frozen_fraction,
            "grades/trainable_fraction": self.trainable_fraction,
        }
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=int(trainer.global_step))

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
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=int(trainer.global_step))
            self._log_histogram(trainer, int(trainer.global_step))
        for idx, smoothed, threshold in to_freeze:
            comp = self._components[idx]
            lr = self._lr_of(trainer, comp)
            numel = freeze_parameters(comp.params, trainer.optimizers)
            self._stats.clear([idx])
            self._last_values.pop(comp.name, None)
            self._frozen[comp.name] = {
                "step": step,
                "epoch": int(trainer.current_epoch),
                "statistic": smoothed,
                "tau": threshold,
                "lr": lr,
                "numel": numel,
                "params": list(comp.param_names),
            }
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

    def _warn_failures(self, step: int) -> None:
        """Warns once per cause about components that could not be read after the grace."""
        assert self._stats is not None
        by_reason: dict[str, list[str]] = {}
        for idx, why in self._stats.failures.items():
            by_reason.setdefault(why, []).append(self._names[idx])
        advice = {
            NO_GRADIENT: "they are not used in the forward pass or are frozen by someone else; "
            "GradES never freezes them, so they keep the frozen fraction below "
            "max_frozen_ratio",
            NOT_FINITE: "their gradient holds NaN or inf at this step (with fp16 mixed "
            "precision, a step the GradScaler skips); no decision is made for them at such "
            "steps",
        }
        for why, names in by_reason.items():
            if why not in advice or why in self._warned:
                continue
            self._warned.add(why)
            rank_zero_warn(
                f"GradES: {why} for {len(names)} component(s) at step {step} (e.g. "
                f"{names[:5]}): {advice[why]}."
            )

    def _log_histogram(self, trainer: pl.Trainer, step: int) -> None:
        """Logs the spread of all components' latest statistic as a W&B histogram.

        The values span orders of magnitude across layers, so the histogram is of
        ``log10(statistic)`` (zero readings are left out); key
        ``grades/<statistic>/log10_histogram``. Only W&B loggers get it, on rank zero.
        """
        from lightning.pytorch.loggers import WandbLogger

        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        values = [v for v in self._last_values.values() if v is not None and v > 0]
        if not loggers or not values or not trainer.is_global_zero:
            return
        import wandb

        hist = wandb.Histogram([math.log10(v) for v in values])
        for logger in loggers:
            logger.log_metrics({f"grades/{self.statistic}/log10_histogram": hist}, step=step)

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
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

    # --- timeline and state ---------------------------------------------------------

    def timeline(self) -> dict[str, Any]:
        """The freeze timeline: settings, every component, and freezes in order."""
        events = sorted(
            ({"component": n, **{k: v for k, v in i.items()}} for n, i in self._frozen.items()),
            key=lambda e: (
                e["step"],
                self._names.index(e["component"]) if e["component"] in self._names else 0,
            ),
        )
        comps = []
        for comp in self._components:
            info = self._frozen.get(comp.name)
            comps.append(
                {
                    "name": comp.name,
                    "params": comp.numel,
                    "frozen_step": None if info is None else info["step"],
                    "last_statistic": self._last_values.get(comp.name),
                }
            )
        return {
            "callback": self.name,
            "statistic": self.statistic,
            "normalize": self.normalize,
            "interval": self.interval,
            "grace_step": self._grace_step,
            "total_steps": self._total_steps,
            "max_frozen_ratio": self.max_frozen_ratio,
            "frozen_fraction": self.frozen_fraction,
            "trainable_fraction": self.trainable_fraction,
            "stopped_step": self.stopped_step,
            "components": comps,
            "events": events,
        }

    def _write_timeline(self, trainer: pl.Trainer) -> None:
        if not trainer.is_global_zero or not self._names:
            return
        path = run_dir(trainer) / TIMELINE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.timeline(), indent=1))
        os.replace(tmp, path)

    @override
    def _progress_state(self) -> dict[str, Any]:
        if self._rule is None or self._stats is None:
            return {"frozen": self._frozen, **self._pending_state}
        return {
            "frozen": self._frozen,
            "rule": self._rule.state_dict(self._names),
            "snapshots": self._stats.state_dict(),
            "last_step": self._last_step,
        }

    @override
    def _reset_progress(self) -> None:
        super()._reset_progress()
        self._frozen = {}
        self._pending_state = {}
        self._last_step = -1
        self._read_at_step = set()
        self._last_values = {}
        self._stop_due = False
        self._warned = set()

    def __getstate__(self) -> dict[str, Any]:
        """Pickles configuration and progress, not the model's parameters."""
        state = self.__dict__.copy()
        progress = self._progress_state()
        state["_pending_state"] = {k: v for k, v in progress.items() if k != "frozen"}
        state.update(_components=[], _stats=None, _rule=None, _setup_module=None)
        # Lightning attaches the module's bound log/log_dict to callbacks during fit.
        state.pop("log", None)
        state.pop("log_dict", None)
        return state

    @override
    def _load_progress_state(self, state: dict[str, Any]) -> None:
        self._frozen = {str(k): dict(v) for k, v in (state.get("frozen") or {}).items()}
        self._pending_state = {k: v for k, v in state.items() if k != "frozen"}
        # Resuming into the same model object: its frozen parameters are already
        # requires_grad=False. Lightning restores callbacks before it builds the optimizers,
        # so make them trainable again for now: a configure_optimizers that keeps only
        # trainable parameters then builds the optimizer the checkpoint was written with.
        # They are frozen again (state dropped) before the first step.
        module = self._setup_module
        if module is not None:
            params = dict(module.named_parameters())
            for info in self._frozen.values():
                for name in info["params"]:
                    param = params.get(name)
                    if param is not None and not param.requires_grad:
                        param.requires_grad_(True)
