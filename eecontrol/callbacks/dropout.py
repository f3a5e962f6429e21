"""``DropoutSchedule``: early / late dropout and stochastic depth for any model."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from eecontrol.callbacks._control import ControlCallback, check_choice, check_range
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
PER_BLOCK = ("linear", "uniform")


class DropoutSchedule(ControlCallback):
    """Schedules dropout and/or stochastic-depth rates by optimizer step (early / late).

    Liu et al., "Dropout Reduces Underfitting" (ICML 2023). Early dropout (dropout only
    before the cutoff) helps underfitting models; late dropout (only after it) helps
    overfitting ones. The rate is a function of ``trainer.global_step`` only, so it is the
    same on every DDP rank and continues exactly after a resume; it is applied once per
    optimizer step (on the first micro-batch of an accumulation group).

    Example::

        trainer = L.Trainer(callbacks=[DropoutSchedule(mode="early", p=0.1, cutoff=0.2)])

    Args:
        p: dropout rate while on, in [0, 1).
        mode: ``standard`` (constant p), ``early`` or ``late``.
        schedule: ``constant``, or ``linear`` (early: p decays to exactly 0 at the cutoff;
            late, our extension: 0 until the cutoff, then a ramp up to p at the end).
        cutoff: where the phase changes, in units of ``cutoff_unit``.
        cutoff_unit: ``fraction`` of the run's optimizer steps (cutoff in [0, 1]) or
            ``epochs`` (cutoff in [0, max_epochs]).
        target: ``dropout``, ``drop_path`` (stochastic depth) or ``both``.
        drop_path_rate: the stochastic-depth rate while on, in [0, 1) (default: ``p``).
        drop_path_per_block: ``linear`` (block i of d gets ``linspace(0, rate, d)[i]``, the
            blocks found by structure, ``nn.Identity`` blocks counted, as in the reference
            code and timm) or ``uniform``.
        float_attributes: names or globs of rate attributes to set (Hugging Face style;
            default: every name that says dropout, ints such as ``attention_dropout=0``
            included). The set-up report (console, ``decisions.jsonl``, loggers) lists
            what is controlled and every rate-like attribute left out; under 90%
            controlled is a warning.
        setters: the module families to recognise (default: every built-in family).
        prog_bar: show the current rate in the progress bar.
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
        self.report: RateReport | None = None

    @override
    def _config(self) -> dict[str, Any]:
        return {
            "p": self.p,
            "mode": self.mode,
            "schedule": self.schedule,
            "cutoff": self.cutoff,
            "cutoff_unit": self.cutoff_unit,
            "target": self.target,
            "drop_path_rate": self.drop_path_rate,
            "drop_path_per_block": self.drop_path_per_block,
        }

    @override
    def _identity(self) -> dict[str, Any]:
        return {"mode": self.mode, "target": self.target}

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

    def _build_schedules(self, trainer: pl.Trainer) -> tuple[int, int, int]:
        total = trainer.estimated_stepping_batches
        if not math.isfinite(total) or total < 1:
            raise ValueError(
                "DropoutSchedule needs a finite training length: set `max_epochs` or "
                f"`max_steps` on the Trainer (estimated optimizer steps: {total})."
            )
        total = int(total)
        accumulate = max(int(trainer.accumulate_grad_batches), 1)
        steps_per_epoch = max(math.ceil(float(trainer.num_training_batches) / accumulate), 1)
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
        step = int(trainer.global_step)
        rates = self._apply(step)
        if not self._decisions:
            self._phase = self._phase_of(rates)
            counts = ", ".join(f"{v} {k}" for k, v in self._targets.summary().items())
            depth = f" over {self._targets.depth} blocks" if self._targets.drop_path else ""
            self._decide(
                trainer,
                "schedule",
                f"{self.mode} {self.schedule} schedule over {total} optimizer steps, phase "
                f"changes at step {cutoff_step}; dropout {self._phase} at start; controls "
                f"{counts}{depth}; left out: {left or 'nothing'}",
                {
                    "total_steps": total,
                    "steps_per_epoch": steps_per_epoch,
                    "cutoff_step": cutoff_step,
                    **{f"{k}_targets": len(getattr(self._targets, k)) for k in self.kinds},
                    **{f"{k}_rate": v for k, v in rates.items()},
                    "drop_path_blocks": self._targets.depth,
                    "rate_coverage": self.report.fraction,
                    "left_out": left,
                    "left_out_count": len(self.report.left_out),
                    "controlled_by_family": json.dumps(self._targets.summary(), sort_keys=True),
                },
            )

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        step = int(trainer.global_step)
        if step != self._applied_step:
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
        for kind, rate in self._rates.items():
            pl_module.log(
                f"{kind}/rate",
                rate,
                on_step=True,
                on_epoch=False,
                prog_bar=self.prog_bar,
                batch_size=1,
            )

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
