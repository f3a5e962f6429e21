"""GradES's state: what the user reads, the freeze timeline, and checkpointed progress.

:class:`GradESState` is the part of :class:`~eecontrol.callbacks.grades.GradES` that
holds its progress (the frozen set, the rule's and the statistic's state) and says what
it did (fractions, summary, ``grades_timeline.json``); the hooks live in ``grades.py``.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from eecontrol.callbacks._control import ControlCallback, is_compiled, recompile_limit, run_dir
from eecontrol.callbacks._grades_log import FAILURE_ADVICE, log_metrics, lr_of, owners
from eecontrol.callbacks._grades_setup import compile_cost
from eecontrol.core.grades import (
    Component,
    Coverage,
    FreezeRule,
    GradStatistic,
    coverage,
    find_components,
    freeze_parameters,
    named_parameters,
    resolve_taus,
)

TIMELINE_FILE = "grades_timeline.json"


class GradESState(ControlCallback):
    """GradES's progress and reports (the base of :class:`~eecontrol.callbacks.GradES`)."""

    tau: Any
    statistic: str
    normalize: str
    interval: int
    grace: float
    max_frozen_ratio: float
    rel_tau: float
    smoothing: float
    patterns: list[str] | None

    def __init__(self) -> None:
        super().__init__()
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
        self._sharded = False  # FSDP: each process holds a piece of every matrix

    @override
    def _config(self) -> dict[str, Any]:
        keys = ("tau", "statistic", "normalize", "interval", "grace", "max_frozen_ratio")
        config = self._attributes(*keys, "rel_tau", "smoothing")
        config["patterns"] = None if self.patterns is None else list(self.patterns)
        return config

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

    # --- the watched set and its frozen part ----------------------------------------

    def _discover(self, pl_module: pl.LightningModule) -> None:
        """Finds the components (the restored frozen set included) and their coverage."""
        frozen_params = [n for info in self._frozen.values() for n in info["params"]]
        self._components = find_components(pl_module, self.patterns, keep=frozen_params)
        self._names = [c.name for c in self._components]
        taus = resolve_taus(self.tau, self._components)
        self._stats = GradStatistic(
            self._components, self.statistic, self.normalize, sharded=self._sharded
        )
        self._rule = FreezeRule(taus, self.rel_tau, self.smoothing)
        self._total_params = sum(p.numel() for p in pl_module.parameters())
        kept = set(frozen_params)
        self._trainable_at_start = sum(
            p.numel() for n, p in pl_module.named_parameters() if p.requires_grad or n in kept
        )
        self._coverage = coverage(pl_module, self._components, keep=frozen_params)

    def _apply_restored(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Applies checkpointed progress: statistics state and the frozen set."""
        assert self._stats is not None and self._rule is not None
        state, self._pending_state = self._pending_state, {}
        if state:
            self._rule.load_state_dict(state.get("rule") or {}, self._names)
            self._stats.load_state_dict(state.get("snapshots") or {})
            self._last_step = int(state.get("last_step", -1))
        params = named_parameters(pl_module)
        missing = [n for info in self._frozen.values() for n in info["params"] if n not in params]
        if missing:
            raise ValueError(
                f"GradES: the checkpoint froze parameters that this model does not have: "
                f"{missing[:10]}; resume with the model the checkpoint was written by."
            )
        for info in self._frozen.values():
            freeze_parameters((params[n] for n in info["params"]), trainer.optimizers)
        self._stats.clear(i for i, n in enumerate(self._names) if n in self._frozen)

    def freeze_steps_bound(self) -> int:
        """The most optimizer steps at which components can still freeze in this run."""
        readings = math.ceil(max(self._total_steps - self._grace_step, 0) / self.interval)
        return min(len(self._names) - len(self._frozen), readings)

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
            self._owner = owners(optimizers, self._components)
        index = next((k for k, o in enumerate(optimizers) if o is optimizer), None)
        return self._owner.get(index, set()) if index is not None else None

    def _freeze(
        self, trainer: pl.Trainer, idx: int, step: int, smoothed: float, threshold: float
    ) -> tuple[float | None, int]:
        """Freezes component ``idx`` and records it; returns its learning rate and size."""
        assert self._stats is not None
        comp = self._components[idx]
        lr = lr_of(trainer.optimizers, comp)
        freeze_parameters(comp.params, trainer.optimizers)
        numel = comp.numel  # at full size (a piece of it on each process under FSDP)
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
        return lr, numel

    # --- reports ------------------------------------------------------------------

    def _compile_cost(self, pl_module: pl.LightningModule) -> None:
        """Under ``torch.compile``: says how many recompiles freezing can cost."""
        if not is_compiled(pl_module):
            return
        message, over = compile_cost(
            self.freeze_steps_bound(),
            recompile_limit(),
            len(self._names),
            self.interval,
            self._grace_step,
            self._total_steps,
        )
        (rank_zero_warn if over else rank_zero_info)(message)

    def _log_fractions(self, trainer: pl.Trainer) -> None:
        """Frozen and trainable fraction to the loggers (not through ``pl_module.log``)."""
        log_metrics(
            trainer,
            {
                "grades/frozen_fraction": self.frozen_fraction,
                "grades/trainable_fraction": self.trainable_fraction,
            },
        )

    def _warn_failures(self, step: int) -> None:
        """Warns once per cause about components that could not be read after the grace."""
        assert self._stats is not None
        by_reason: dict[str, list[str]] = {}
        for idx, why in self._stats.failures.items():
            by_reason.setdefault(why, []).append(self._names[idx])
        for why, names in by_reason.items():
            if why not in FAILURE_ADVICE or why in self._warned:
                continue
            self._warned.add(why)
            rank_zero_warn(
                f"GradES: {why} for {len(names)} component(s) at step {step} (e.g. "
                f"{names[:5]}): {FAILURE_ADVICE[why]}."
            )

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
            params = named_parameters(module)
            for info in self._frozen.values():
                for name in info["params"]:
                    param = params.get(name)
                    if param is not None and not param.requires_grad:
                        param.requires_grad_(True)
