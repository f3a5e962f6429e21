"""``DropoutSchedule``: early / late dropout and stochastic depth for any model."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from eecontrol.callbacks._control import ControlCallback, check_choice, check_range
from eecontrol.callbacks._trainer import (
    is_compiled,
    log_every_n,
    manual_optimization,
    plan_step,
    plan_unit,
    planned_steps,
    recompile_limit,
)
from eecontrol.core.drop_targets import (
    DEFAULT_FLOAT_ATTRIBUTES,
    DropTargets,
    RateReport,
    RateSetter,
    default_setters,
    find_drop_targets,
    rate_report,
)
from eecontrol.core.schedules import CUTOFF_UNITS, MODES, SCHEDULES, DropSchedule, cutoff_to_step

TARGETS = ("dropout", "drop_path", "both")

#: Below this share of the model's dropout-like rates controlled, the set-up report warns.
MIN_COVERAGE = 0.9
PER_BLOCK = ("linear", "efficientnet", "uniform")


class DropoutSchedule(ControlCallback):
    """Schedules dropout and/or stochastic-depth rates by optimizer step (early / late).

    Liu et al., "Dropout Reduces Underfitting" (ICML 2023). Early dropout (dropout only
    before the cutoff) helps underfitting models; late dropout (only after it) helps
    overfitting ones. The rate is a function of the optimizer step only (``global_step``;
    under manual optimization the training batch, the unit of
    ``trainer.estimated_stepping_batches``, since ``global_step`` there counts every
    ``optimizer.step()`` call), so it is the same on every DDP rank and continues exactly
    after a resume; it is applied once per optimizer step (on the first micro-batch of an
    accumulation group). The plan works from ``max_steps`` alone, with an
    ``IterableDataset`` of unknown length too (``cutoff_unit`` ``fraction`` or ``steps``).
    The rate goes to the loggers at their cadence (``log_every_n_steps``) and at every
    step where it changes, not per micro-batch.

    Example::

        trainer = L.Trainer(callbacks=[DropoutSchedule(mode="early", p=0.1, cutoff=0.2)])

    Args:
        p: dropout rate while on, in [0, 1).
        mode: ``standard`` (constant p), ``early`` or ``late``.
        schedule: ``constant``, or ``linear`` (early: p decays to exactly 0 at the cutoff;
            late, our extension: 0 until the cutoff, then a ramp up to p at the end).
        cutoff: where the phase changes, in units of ``cutoff_unit``.
        cutoff_unit: ``fraction`` of the run's optimizer steps
            (``trainer.estimated_stepping_batches``; cutoff in [0, 1]), ``steps``
            (optimizer steps, a whole number in [0, total steps]) or ``epochs`` (cutoff in
            [0, max_epochs]; needs training data of known length).
        target: ``dropout``, ``drop_path`` (stochastic depth) or ``both``.
        drop_path_rate: the stochastic-depth rate while on, in [0, 1) (default: ``p``).
        drop_path_per_block: ``linear`` (block i of d gets ``linspace(0, rate, d)[i]``, the
            blocks found by structure, ``nn.Identity`` slots counted, as in the reference
            code and timm's ViT, Swin and ConvNeXt), ``efficientnet`` (``rate * i / d``,
            as timm's EfficientNet and MobileNetV3 builders) or ``uniform``.
        float_attributes: names or globs of rate attributes to set (Hugging Face style;
            default: every name that says dropout, ints such as ``attention_dropout=0``
            included). The set-up report (console, ``decisions.jsonl``, loggers) lists
            what is controlled and every rate-like attribute left out; under 90%
            controlled is a warning.
        setters: the module families to recognise (default: every built-in family).
        prog_bar: show the current rate in Lightning's progress bar (sent when it changes;
            eecontrol's progress bars show it anyway).
    """

    def __init__(
        self,
        p: float = 0.1,
        mode: str = "early",
        schedule: str = "constant",
        cutoff: float | None = 0.2,
        cutoff_unit: str = "fraction",
        target: str = "dropout",
        drop_path_rate: float | None = None,
        drop_path_per_block: str = "linear",
        float_attributes: Sequence[str] = DEFAULT_FLOAT_ATTRIBUTES,
        setters: Sequence[RateSetter] | None = None,
        prog_bar: bool = True,
    ) -> None:
        super().__init__()
        check_range("p", p, low=0.0, high=1.0, high_inclusive=False)
        self.mode = check_choice("mode", mode, MODES)
        self.schedule = check_choice("schedule", schedule, SCHEDULES)
        self.cutoff_unit = check_choice("cutoff_unit", cutoff_unit, CUTOFF_UNITS)
        self.target = check_choice("target", target, TARGETS)
        self.drop_path_per_block = check_choice(
            "drop_path_per_block", drop_path_per_block, PER_BLOCK
        )
        if mode != "standard":
            if cutoff is None:
                raise ValueError(f"`cutoff` is required with mode={mode!r}; got None.")
            if cutoff_unit == "fraction":
                check_range("cutoff", cutoff, low=0.0, high=1.0)
            elif cutoff_unit == "steps":
                check_range("cutoff", cutoff, low=0, integer=True)
            else:
                check_range("cutoff", cutoff, low=0.0)
        if drop_path_rate is not None:
            check_range("drop_path_rate", drop_path_rate, low=0.0, high=1.0, high_inclusive=False)
        if isinstance(float_attributes, str) or not isinstance(float_attributes, Sequence):
            raise ValueError(
                f"`float_attributes` must be a list of attribute names ([] for none), got "
                f"{'the string ' if isinstance(float_attributes, str) else ''}{float_attributes!r}."
            )
        self.p = float(p)
        self.cutoff = None if cutoff is None else float(cutoff)
        self.drop_path_rate = float(p if drop_path_rate is None else drop_path_rate)
        self.float_attributes = tuple(float_attributes)
        self.setters = (
            list(setters) if setters is not None else default_setters(self.float_attributes)
        )
        self.prog_bar = prog_bar
        # progress
        self._phase: str | None = None
        self._applied_step: int = -1
        # per fit
        self._targets: DropTargets | None = None
        self._dropout_schedule: DropSchedule | None = None
        self._drop_path_schedule: DropSchedule | None = None
        self._rates: dict[str, float] = {}
        self._bar_rates: dict[str, float] = {}
        self.report: RateReport | None = None

    @override
    def _config(self) -> dict[str, Any]:
        keys = ("p", "mode", "schedule", "cutoff", "cutoff_unit", "target")
        return self._attributes(*keys, "drop_path_rate", "drop_path_per_block")

    @override
    def _identity(self) -> dict[str, Any]:
        return self._attributes("mode", "target")

    @property
    def kinds(self) -> tuple[str, ...]:
        """The target kinds this schedule controls."""
        return ("dropout", "drop_path") if self.target == "both" else (self.target,)

    def rates(self, step: int) -> dict[str, float]:
        """The scheduled rate of each kind at optimizer step ``step`` (after fit start)."""
        out: dict[str, float] = {}
        if self._dropout_schedule is not None:
            out["dropout"] = self._dropout_schedule.rate(step)
        if self._drop_path_schedule is not None:
            out["drop_path"] = self._drop_path_schedule.rate(step)
        return out

    def _build_schedules(self, trainer: pl.Trainer) -> tuple[int, int | None, int]:
        total = planned_steps(trainer, "DropoutSchedule")
        steps_per_epoch = _steps_per_epoch(trainer)
        if self.mode == "standard" or self.cutoff is None:
            cutoff_step = 0
        else:
            max_epochs = trainer.max_epochs if trainer.max_epochs not in (None, -1) else None
            cutoff_step = cutoff_to_step(
                self.cutoff, self.cutoff_unit, steps_per_epoch, total, max_epochs
            )
        if "dropout" in self.kinds:
            self._dropout_schedule = DropSchedule(
                self.p, total, cutoff_step, self.mode, self.schedule
            )
        if "drop_path" in self.kinds:
            self._drop_path_schedule = DropSchedule(
                self.drop_path_rate, total, cutoff_step, self.mode, self.schedule
            )
        return total, steps_per_epoch, cutoff_step

    def _apply(self, step: int) -> dict[str, float]:
        assert self._targets is not None
        rates = self.rates(step)
        if "dropout" in rates:
            self._targets.set_dropout(rates["dropout"])
        if "drop_path" in rates:
            self._targets.set_drop_path(rates["drop_path"], self.drop_path_per_block)
        self._applied_step = step
        self._rates = rates
        return rates

    def rate_values(self, start: int, total: int) -> int:
        """How many distinct rate settings the schedule makes from ``start`` to ``total``."""
        seen = {tuple(sorted(self.rates(t).items())) for t in range(start, max(total, start + 1))}
        return len(seen)

    def _compile_cost(self, pl_module: pl.LightningModule, total: int, start: int) -> int | None:
        """Under ``torch.compile``: says what the schedule costs in recompiles (or None).

        torch guards on a dropout module's float rate (``p``, ``attention_dropout``,
        ``drop_prob``), so every distinct rate compiles the model again (measured with the
        ``aot_eager`` backend: one compile per distinct value; a value seen before reuses
        its graph). Past torch's ``recompile_limit`` the model silently runs eagerly.
        """
        if not is_compiled(pl_module):
            return None
        values = self.rate_values(start, total)
        limit = recompile_limit()
        message = (
            f"DropoutSchedule under torch.compile: the schedule sets {values} distinct rate "
            f"value(s) over this run; torch guards on dropout rates, so each compiles the "
            f"model once more (validation in eval mode compiles its own)."
        )
        if values >= limit:
            rank_zero_warn(
                f"{message} torch's recompile_limit is {limit}: past it the model runs "
                f"eagerly. Raise it (torch._dynamo.config.recompile_limit = {2 * values + 2}) "
                f"or use schedule='constant' (2 values)."
            )
        else:
            rank_zero_info(message)
        return values

    def _phase_of(self, rates: dict[str, float]) -> str:
        return "on" if any(r > 0.0 for r in rates.values()) else "off"

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        self._targets = find_drop_targets(pl_module, self.kinds, self.setters)
        self.report = rate_report(pl_module, self._targets, self.kinds)
        left = "; ".join(f"{n}.{a} ({why})" for n, a, why in self.report.left_out[:20])
        if self.report.fraction < MIN_COVERAGE:
            rank_zero_warn(
                f"DropoutSchedule controls only {self.report.fraction:.0%} of the model's "
                f"dropout-like rates; left out: {left}. Add their names to `float_attributes` "
                f"or pass a RateSetter."
            )
        total, steps_per_epoch, cutoff_step = self._build_schedules(trainer)
        step = plan_step(trainer)
        compile_note = self._compile_cost(pl_module, total, step)
        self._bar_rates = {}
        rates = self._apply(step)
        if not self._decisions or self.fit_kind == "continued":
            self._phase = self._phase_of(rates)
            counts = ", ".join(f"{v} {k}" for k, v in self._targets.summary().items())
            depth = f" over {self._targets.depth} blocks" if self._targets.drop_path else ""
            self._decide(
                trainer,
                "schedule",
                f"{self.mode} {self.schedule} schedule over {total} {plan_unit(trainer)}, "
                f"phase changes at step {cutoff_step}; dropout {self._phase} at step {step}; "
                "controls "
                f"{counts}{depth}; left out: {left or 'nothing'}",
                {
                    "total_steps": total,
                    "unit": plan_unit(trainer),
                    "start_step": step,
                    "steps_per_epoch": steps_per_epoch,
                    "cutoff_step": cutoff_step,
                    **{f"{k}_targets": len(getattr(self._targets, k)) for k in self.kinds},
                    **{f"{k}_rate": v for k, v in rates.items()},
                    "drop_path_blocks": self._targets.depth,
                    "rate_coverage": self.report.fraction,
                    "left_out": left,
                    "left_out_count": len(self.report.left_out),
                    "controlled_by_family": json.dumps(self._targets.summary(), sort_keys=True),
                    "compiled_rate_values": compile_note,
                },
            )
        self._applied_step = -1  # the first micro-batch applies (again) and logs

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        step = plan_step(trainer)
        if step == self._applied_step:
            return  # a later micro-batch of the same optimizer step
        rates = self._apply(step)
        phase = self._phase_of(rates)
        if phase != self._phase:
            previous, self._phase = self._phase, phase
            self._decide(
                trainer,
                f"{'+'.join(self.kinds)}_{phase}",
                f"{self.mode} {self.schedule} schedule: phase {previous} -> {phase} at "
                f"optimizer step {step}",
                {f"{k}_rate": v for k, v in rates.items()},
            )
        # Loggers at their cadence and at every change (so that the logged series, drawn as
        # steps, is the schedule), once per optimizer step; pl_module.log per micro-batch
        # cost several percent of a small model's step.
        # A change is read from the schedule (not from what this process logged), so a
        # resumed run logs the same rows as the uninterrupted one.
        if trainer.loggers and (step % log_every_n(trainer) == 0 or rates != self.rates(step - 1)):
            metrics = {f"{kind}/rate": rate for kind, rate in rates.items()}
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=int(trainer.global_step))
        if self.prog_bar and rates != self._bar_rates:
            self._bar_rates = dict(rates)
            for kind, rate in rates.items():
                pl_module.log(f"{kind}/rate", rate, logger=False, prog_bar=True, batch_size=1)

    @override
    def progress_fields(self) -> dict[str, str]:
        return {f"{kind} p": f"{rate:.3g}" for kind, rate in self._rates.items()}

    @override
    def summary(self) -> dict[str, Any]:
        out = super().summary()
        out.update(
            {f"DropoutSchedule/final_{kind}_rate": rate for kind, rate in self._rates.items()}
        )
        out["DropoutSchedule/phase"] = self._phase
        return out

    @override
    def _progress_state(self) -> dict[str, Any]:
        return {"phase": self._phase}

    @override
    def _load_progress_state(self, state: dict[str, Any]) -> None:
        self._phase = state.get("phase")


def _steps_per_epoch(trainer: pl.Trainer) -> int | None:
    """Optimizer steps per epoch (training batches under manual optimization), or None.

    None when the training data has no length (an ``IterableDataset``). With ``max_steps``
    the loaders are not loaded yet at ``on_fit_start``; they are loaded here (as
    ``estimated_stepping_batches`` does without ``max_steps``).
    """
    batches = float(trainer.num_training_batches)
    if not math.isfinite(batches):
        trainer.fit_loop.setup_data()
        batches = float(trainer.num_training_batches)
    if not math.isfinite(batches):
        return None
    accumulate = 1 if manual_optimization(trainer) else max(int(trainer.accumulate_grad_batches), 1)
    return max(math.ceil(batches / accumulate), 1)
