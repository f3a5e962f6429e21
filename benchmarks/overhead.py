"""Whole-step overhead of every eecontrol callback, side by side with the bare loop.

Setting: a tiny Llama sequence classifier (2 layers, hidden 128, built from a config, no
download) trains on scikit-learn's real digits read as 64-token sequences, batch 32,
``accumulate_grad_batches=4``, ``precision="bf16-mixed"``, Lightning's default logging
(``log_every_n_steps=50``, the default logger: CSV here), validation at every epoch end
(52 micro-batches = 13 optimizer steps per epoch), no checkpointing in the bare run.
DARTSPlusStopping is measured on the recipe's tiny DARTS search instead (it needs one;
manual optimisation, no accumulation).

Method (made for a shared, loaded machine):

- The clock is the training thread's CPU time (``time.thread_time``; one torch thread, no
  loader workers, so all the work of the loop is on that thread). Other processes on the
  machine do not add to it, unlike wall time. Wall time is recorded for reference.
- Within each run a clock callback (first in the callback list) stamps every
  ``on_train_batch_start``. The time between two stamps is one micro-batch with every hook
  in between (all callbacks' hooks, the optimizer step, Lightning's logging); a segment
  that contains a validation (with the epoch-end hooks around it) is a *validation
  segment*, the others are *step segments*. So each run gives three numbers: CPU per
  optimizer step (step segments x 4, their mean: periodic work such as logging every 50
  steps is included), CPU per validation (validation segment minus a step segment), CPU per
  fit (set-up and end, the rest of ``trainer.fit``).
- Runs come in pairs, bare and with the callback, run in two threads of one process that
  alternate micro-batch by micro-batch (a start line first, the starter flipped each
  pair; the first optimizer step of each run counts as set-up). Each pair gives one
  ratio; the table reports the median over pairs with its range and quartiles. An A/A
  entry (bare against bare) gives the noise floor of this comparison. Separate runs still
  differ by a few percent on a loaded machine (their memory layout differs; measured
  A/A: up to 4%), so:
- ``--gate`` measures the per-step overhead within one run: the callback's per-step hooks
  (``on_train_batch_*``, ``on_before_backward``, ``on_after_backward``,
  ``on_before_optimizer_step``, ``on_before_zero_grad``) run on even optimizer steps only
  (groups of ``accumulate`` micro-batches), and the even steps' CPU is compared with the
  odd steps' of the same run; the same split of the paired bare run is the noise floor.
  Only for configurations whose per-step hooks only observe (GradES with ``tau=0``,
  DropoutSchedule at the model's own rate), so skipping them on odd steps changes nothing.
- Each callback's own hooks are also timed directly (every hook its class overrides is
  wrapped with ``thread_time``): the cost attributed to the callback itself, a lower bound
  of the whole-step difference that has no run-to-run noise.
- The per-step verdict is the target (<= 1%). For work done per validation or per epoch
  (CES's candidate storage, the curve fit, a checkpoint) the JSON also gives the
  validation cadence, in optimizer steps, at which per-step plus per-validation overhead
  stays <= 1%.

Usage::

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/overhead.py   # -> benchmarks/results/overhead.json
    python benchmarks/overhead.py --device cuda --out $OUT/overhead.json
    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/overhead.py --gate --epochs 3 --repeats 3
    python benchmarks/overhead.py --dry-run          # 1 pair, 1 epoch each: checks it runs
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, TensorDataset

RESULTS = Path(__file__).resolve().parent / "results" / "overhead.json"
WARM: set[bool] = set()
TARGET = 0.01
AA = "A/A (bare vs bare)"
#: Measured only on request (--only): the defaults, whose freezing / dropout-off also
#: change the compute of the steps after them.
REFERENCE = ("GradES (defaults: freezes)", "DropoutSchedule (early, cutoff 0.5)")

#: Hooks counted per optimizer step (training-batch hooks); the others are per validation
#: (validation and epoch hooks) or per fit (set-up, end, state).
STEP_HOOKS = {
    "on_train_batch_start",
    "on_train_batch_end",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_before_zero_grad",
}
VALIDATION_HOOKS = {
    "on_validation_start",
    "on_validation_end",
    "on_validation_epoch_start",
    "on_validation_epoch_end",
    "on_validation_batch_start",
    "on_validation_batch_end",
    "on_train_epoch_start",
    "on_train_epoch_end",
    "on_save_checkpoint",
    "state_dict",
}


def digits_tokens(n_val: int = 128) -> tuple[TensorDataset, TensorDataset]:
    """scikit-learn's real digits read as 64 tokens (intensities 0..16)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.as_tensor(x, dtype=torch.long)
    y = torch.as_tensor(y, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    val, train = order[:n_val], order[n_val:]
    return TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val])


class TinyLlama(pl.LightningModule):
    """A random Llama classifier built from a config, with attention dropout 0.1."""

    def __init__(self, hidden: int = 128, layers: int = 2) -> None:
        super().__init__()
        from transformers import LlamaConfig, LlamaForSequenceClassification

        torch.manual_seed(0)
        config = LlamaConfig(
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=18,
            max_position_embeddings=64,
            pad_token_id=17,
            num_labels=10,
            attention_dropout=0.1,
        )
        self.net = LlamaForSequenceClassification(config)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.net(input_ids=input_ids).logits

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x).float(), y)
        self.log("train/loss", loss, batch_size=len(y))
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val/loss", F.cross_entropy(self(x).float(), y), batch_size=len(y))

    def configure_optimizers(self) -> Any:
        return torch.optim.AdamW(self.parameters(), lr=3e-3)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class HookTimer:
    """Wraps every hook a callback's class overrides with a thread-CPU accumulator."""

    def __init__(self, callback: Callback, gate: Callable[[], bool] | None = None) -> None:
        self.gate = gate
        self.cpu: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        names = [n for n in dir(Callback) if n.startswith("on_") or n in ("setup", "teardown")]
        names += ["state_dict", "load_state_dict"]
        for name in names:
            own = getattr(type(callback), name, None)
            if own is None or own is getattr(Callback, name, None):
                continue
            setattr(callback, name, self._wrap(name, getattr(callback, name)))

    def _wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        gated = self.gate is not None and name in STEP_HOOKS

        def timed(*args: Any, **kwargs: Any) -> Any:
            if gated and not self.gate():  # type: ignore[misc]
                return None  # an "off" step: the per-step hooks are not called
            t0 = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.cpu[name] = self.cpu.get(name, 0.0) + time.thread_time() - t0
                self.calls[name] = self.calls.get(name, 0) + 1

        return timed

    def total(self, kind: set[str] | None) -> float:
        """CPU seconds in the hooks of ``kind`` (None: every other hook)."""
        every = STEP_HOOKS | VALIDATION_HOOKS
        return sum(
            v for k, v in self.cpu.items() if (k in kind if kind is not None else k not in every)
        )


def _pruning(root: Path) -> Callback:
    import optuna

    from eecontrol.sweep.trial import OptunaPruning

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{root / 'study.db'}"
    study = optuna.create_study(study_name="bench", storage=url, load_if_exists=True)
    trial = study.ask()
    return OptunaPruning("val/loss", "bench", trial.number, storage=url)


def callbacks() -> dict[str, Callable[[Path], list[Callback]]]:
    """The callbacks measured, each at its documented defaults."""
    from eecontrol import (
        ConformalEarlyStopping,
        DARTSPlusStopping,
        DropoutSchedule,
        GradES,
        LearningCurveStopping,
    )
    from eecontrol.resume import ResumableCheckpoint

    return {
        AA: lambda root: [],
        # tau=0: reads every component at every step and never freezes (the pure cost;
        # frozen matrices make the steps after a freeze cheaper, which is no overhead)
        "GradES": lambda root: [GradES(tau=0.0)],
        # the model's own rate (0.1) throughout: the same compute as the bare run
        "DropoutSchedule": lambda root: [DropoutSchedule(p=0.1, mode="standard")],
        "ConformalEarlyStopping": lambda root: [ConformalEarlyStopping(task="classification")],
        "LearningCurveStopping": lambda root: [LearningCurveStopping("val/loss", "min")],
        "OptunaPruning": lambda root: [_pruning(root)],
        "ResumableCheckpoint": lambda root: [ResumableCheckpoint(dirpath=root / "ck")],
        "DARTSPlusStopping": lambda root: [DARTSPlusStopping(stop_training=False)],
        # their defaults, for reference: freezing and dropout-off change the compute too
        "GradES (defaults: freezes)": lambda root: [GradES()],
        "DropoutSchedule (early, cutoff 0.5)": lambda root: [
            DropoutSchedule(p=0.1, mode="early", cutoff=0.5)
        ],
    }


def _darts_data() -> tuple[Any, DataLoader]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    xs = torch.as_tensor(x / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
    ys = torch.as_tensor(y)
    half = (len(ys) - 128) // 2
    w = TensorDataset(xs[128 : 128 + half], ys[128 : 128 + half])
    a = TensorDataset(xs[128 + half :], ys[128 + half :])
    train = {
        "weights": DataLoader(w, batch_size=32, shuffle=True),
        "arch": DataLoader(a, batch_size=32, shuffle=True),
    }
    return train, DataLoader(TensorDataset(xs[:128], ys[:128]), batch_size=128)


class Baton:
    """Strict alternation of two training threads, one micro-batch each.

    Both fits of a pair run in one process, each in its own thread; at every training batch
    start a thread hands the turn to the other and waits for it back. So the bare and the
    with-callback run see the same machine, micro-batch by micro-batch, and a load change
    on the shared machine hits both alike (their thread CPU times are counted apart).
    """

    def __init__(self, first: int) -> None:
        self.cond = threading.Condition()
        self.turn = first
        self.done = [False, False]
        self.arrived = [False, False]

    def take(self, me: int, held: bool) -> None:
        """At a batch start of thread ``me``: give the turn away (if held), wait for it.

        The first call is a start line: neither run trains before both have finished
        their set-up, so no micro-batch runs beside the other run's set-up.
        """
        with self.cond:
            self.arrived[me] = True
            if held and not self.done[1 - me]:
                self.turn = 1 - me
            self.cond.notify_all()
            self.cond.wait_for(
                lambda: self.done[1 - me] or (self.turn == me and self.arrived[1 - me])
            )

    def finish(self, me: int) -> None:
        with self.cond:
            self.done[me] = True
            self.turn = 1 - me
            self.cond.notify_all()


class SegmentClock(Callback):
    """Stamps thread CPU and wall time at every training batch start (first in the list).

    ``step`` and ``val`` collect (cpu, wall) of the segments between consecutive stamps,
    split by whether a validation ran inside; ``loop`` is on_train_start .. on_train_end.
    The wait for the other thread's turn lies between two segments, not inside one.
    """

    def __init__(self, baton: Baton | None = None, me: int = 0) -> None:
        self.baton, self.me, self.held = baton, me, False
        self.step: list[tuple[float, float]] = []
        self.val: list[tuple[float, float]] = []
        self.step_index: list[int] = []  # the micro-batch index of each step segment
        self.index = -1  # the current micro-batch's index in the run
        self._last: tuple[float, float] | None = None
        self._val = False
        self.loop = (0.0, 0.0)
        self.steps = 0

    @staticmethod
    def _now() -> tuple[float, float]:
        _sync()
        return time.thread_time(), time.perf_counter()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.loop = self._now()

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        now = self._now()
        if self._last is not None:
            seg = (now[0] - self._last[0], now[1] - self._last[1])
            (self.val if self._val else self.step).append(seg)
            if not self._val:
                self.step_index.append(self.index)
        self.index += 1
        if self.baton is not None:
            before = self._now()
            self.baton.take(self.me, self.held)
            self.held = True
            after = self._now()  # the wait is no part of either run's loop time
            self.loop = (self.loop[0] + after[0] - before[0], self.loop[1] + after[1] - before[1])
        self._last, self._val = self._now(), False

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._val = True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        now = self._now()
        self.loop = (now[0] - self.loop[0], now[1] - self.loop[1])
        self.steps = int(trainer.global_step)


def build_fit(
    name: str | None, darts: bool, args: argparse.Namespace, root: Path, clock: SegmentClock
) -> tuple[Callable[[], None], list[HookTimer], int]:
    """A ready training run (``run()`` fits it), its hook timers and its accumulation."""
    root.mkdir(parents=True, exist_ok=True)  # a callback may keep files there (a study)
    extra = callbacks()[name](root) if name is not None else []
    accumulate = 1 if darts else args.accumulate
    gate = None
    if getattr(args, "gate", False):  # per-step hooks on even optimizer steps only

        def gate() -> bool:
            return (clock.index // accumulate) % 2 == 0

    timers = [HookTimer(cb, gate) for cb in extra]
    torch.manual_seed(0)
    if darts:
        from eecontrol.recipes.darts import DartsSearchModule

        module: pl.LightningModule = DartsSearchModule(c=4, layers=3)
        train, val = _darts_data()
        accumulate = 1
    else:
        module = TinyLlama(args.hidden, args.layers)
        tr, va = digits_tokens()
        # the same batches in both runs of a pair (their own generator, not the global RNG)
        order = torch.Generator().manual_seed(0)
        train = DataLoader(tr, batch_size=args.batch_size, shuffle=True, generator=order)
        val = DataLoader(va, batch_size=128)
        accumulate = args.accumulate
    trainer = pl.Trainer(
        default_root_dir=str(root),
        accelerator="gpu" if args.device == "cuda" else "cpu",
        devices=1,
        precision="bf16-mixed",
        accumulate_grad_batches=accumulate,
        max_epochs=args.epochs,
        limit_train_batches=args.darts_batches if darts else None,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        enable_checkpointing=name == "ResumableCheckpoint",
        callbacks=[clock, *extra],
    )
    return (lambda: trainer.fit(module, train, val)), timers, accumulate


def fit_pair(
    names: tuple[str | None, str | None], darts: bool, args: argparse.Namespace, first: int
) -> list[dict[str, Any]]:
    """Two runs in two threads that alternate micro-batches; their segment times."""
    baton = Baton(first)
    results: list[dict[str, Any]] = [{}, {}]
    errors: list[BaseException] = []
    with tempfile.TemporaryDirectory() as tmp:
        clocks = [SegmentClock(baton, i) for i in range(2)]
        fits = [
            build_fit(names[i], darts, args, Path(tmp) / f"run{i}", clocks[i]) for i in range(2)
        ]

        def work(i: int) -> None:
            run, timers, accumulate = fits[i]
            if args.cpu is not None:  # both threads on one core: the same neighbours
                os.sched_setaffinity(0, {args.cpu})
            try:
                t0 = time.thread_time(), time.perf_counter()
                run()
                _sync()
                fit = time.thread_time() - t0[0], time.perf_counter() - t0[1]
            except BaseException as err:  # re-raised in the main thread
                errors.append(err)
                return
            finally:
                baton.finish(i)
            hooks: dict[str, float] = {}
            for timer in timers:
                for key, kind in (("step", STEP_HOOKS), ("val", VALIDATION_HOOKS), ("fit", None)):
                    hooks[key] = hooks.get(key, 0.0) + timer.total(kind)
                for k, v in timer.cpu.items():
                    hooks[f"hook:{k}"] = hooks.get(f"hook:{k}", 0.0) + v
                    hooks[f"calls:{k}"] = hooks.get(f"calls:{k}", 0) + timer.calls[k]
            clock = clocks[i]
            results[i] = {
                "step": clock.step,
                "val": clock.val,
                "loop": clock.loop,
                "fit": fit,
                "steps": clock.steps,
                "step_index": clock.step_index,
                "micro": accumulate,
                "hooks": hooks,
            }

        threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    return results


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def summarise_run(run: dict[str, Any]) -> dict[str, float]:
    """Per-run CPU (and wall) per optimizer step, per validation and per fit (seconds)."""
    micro = run["micro"]
    # the first optimizer step (lazy set-up: optimizer state, first logging) is per fit
    steady = run["step"][micro:] if len(run["step"]) > micro else run["step"]
    step_cpu = _mean([s[0] for s in steady])
    step_wall = _mean([s[1] for s in steady])
    n_val = len(run["val"])
    out = {
        "step_cpu": step_cpu * micro,
        "step_wall": step_wall * micro,
        # a validation segment also holds one micro-batch: subtract a step segment
        "val_cpu": _mean([s[0] - step_cpu for s in run["val"]]),
        "val_wall": _mean([s[1] - step_wall for s in run["val"]]),
        "fit_cpu": run["fit"][0],
        "fit_wall": run["fit"][1],
        "loop_cpu_per_step": run["loop"][0] / max(run["steps"], 1),
        "validations": float(n_val),
        "steps": float(run["steps"]),
    }
    # the optimizer steps whose micro-batches are all step segments (first step left out),
    # split by parity: with --gate the callback's per-step hooks run on even steps only
    by_step: dict[int, list[float]] = {}
    for seg, index in zip(run["step"], run.get("step_index", [])):
        by_step.setdefault(index // micro, []).append(seg[0])
    whole = {k: sum(v) for k, v in by_step.items() if k > 0 and len(v) == micro}
    on = [v for k, v in whole.items() if k % 2 == 0]
    off = [v for k, v in whole.items() if k % 2 == 1]
    out["on_off"] = _mean(on) / _mean(off) - 1.0 if on and off else math.nan
    # per fit: everything in trainer.fit that is not a step or validation segment
    out["once_cpu"] = run["fit"][0] - sum(s[0] for s in steady) - sum(s[0] for s in run["val"])
    return out


def _spread(xs: list[float], digits: int = 5) -> dict[str, Any]:
    xs = sorted(xs)
    q = statistics.quantiles(xs, n=4) if len(xs) >= 2 else [xs[0]] * 3
    return {
        "median": round(statistics.median(xs), digits),
        "min": round(xs[0], digits),
        "max": round(xs[-1], digits),
        "q1": round(q[0], digits),
        "q3": round(q[2], digits),
        "per_pair": [round(x, digits) for x in xs],
    }


def measure(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Interleaved bare/with pairs for ``name``; the per-step, per-validation, per-fit rows."""
    darts = name == "DARTSPlusStopping"
    bare: list[dict[str, float]] = []
    with_cb: list[dict[str, float]] = []
    hooks: list[dict[str, float]] = []
    if darts not in WARM:  # one warm-up per model and process (imports, allocator, caches)
        fit_pair((None, None), darts, args, 0)
        WARM.add(darts)
    for r in range(args.repeats):
        runs = fit_pair((None, name), darts, args, first=r % 2)
        bare.append(summarise_run(runs[0]))
        with_cb.append(summarise_run(runs[1]))
        hooks.append(runs[1]["hooks"])
        if args.verbose:
            print(
                f"  pair {r}: step {bare[-1]['step_cpu'] * 1e3:.2f} / "
                f"{with_cb[-1]['step_cpu'] * 1e3:.2f} ms, validation "
                f"{bare[-1]['val_cpu'] * 1e3:.1f} / {with_cb[-1]['val_cpu'] * 1e3:.1f} ms, "
                f"even/odd steps {bare[-1]['on_off']:+.4f} / {with_cb[-1]['on_off']:+.4f}",
                flush=True,
            )
    ratio = [w["step_cpu"] / b["step_cpu"] - 1.0 for b, w in zip(bare, with_cb)]
    ratio_wall = [w["step_wall"] / b["step_wall"] - 1.0 for b, w in zip(bare, with_cb)]
    loop = [w["loop_cpu_per_step"] / b["loop_cpu_per_step"] - 1.0 for b, w in zip(bare, with_cb)]
    val_ms = [1e3 * (w["val_cpu"] - b["val_cpu"]) for b, w in zip(bare, with_cb)]
    once_ms = [1e3 * (w["once_cpu"] - b["once_cpu"]) for b, w in zip(bare, with_cb)]
    step_ms = statistics.median(b["step_cpu"] for b in bare) * 1e3
    gated = bool(getattr(args, "gate", False))
    on_off = [w["on_off"] for w in with_cb]
    floor = [b["on_off"] for b in bare]
    per_val = statistics.median(val_ms)
    row: dict[str, Any] = {
        "model": "darts_search" if darts else "tiny_llama",
        "cpu_ms_per_step_bare": round(step_ms, 3),
        "cpu_ms_per_step_with": round(statistics.median(w["step_cpu"] for w in with_cb) * 1e3, 3),
        "method": "gated (per-step hooks on even steps, within run)" if gated else "A/B runs",
        "per_step_overhead": _spread(on_off if gated else ratio),
        "per_step_noise_floor_parity_of_bare_runs": _spread(floor) if gated else None,
        "per_step_overhead_ab_runs": None if gated else _spread(ratio),
        "per_step_overhead_wall": _spread(ratio_wall),
        "per_validation_cpu_ms": _spread(val_ms, 2),
        "per_validation_in_steps": round(per_val / step_ms, 3),
        "per_fit_cpu_ms": _spread(once_ms, 2),
        "whole_loop_overhead_at_this_cadence": _spread(loop),
        "steps": int(bare[0]["steps"]),
        "validations": int(bare[0]["validations"]),
        "steps_per_validation": round(bare[0]["steps"] / max(bare[0]["validations"] + 1, 1), 2),
        "repeats": args.repeats,
    }
    if hooks:
        steps = statistics.median(w["steps"] for w in with_cb)
        vals = statistics.median(w["validations"] for w in with_cb) + 1  # + the last one
        own: dict[str, Any] = {
            "per_step_fraction": round(
                statistics.median(h.get("step", 0.0) for h in hooks)
                / (math.ceil(steps / 2) if gated else steps)
                / (step_ms / 1e3),
                5,
            ),
            "per_validation_ms": round(
                1e3 * statistics.median(h.get("val", 0.0) for h in hooks) / vals, 3
            ),
            "per_fit_ms": round(1e3 * statistics.median(h.get("fit", 0.0) for h in hooks), 2),
            "by_hook_ms_total": {
                k[5:]: round(1e3 * statistics.median(h.get(k, 0.0) for h in hooks), 3)
                for k in sorted({k for h in hooks for k in h if k.startswith("hook:")})
            },
            "calls": {
                k[6:]: int(statistics.median(h.get(k, 0) for h in hooks))
                for k in sorted({k for h in hooks for k in h if k.startswith("calls:")})
            },
        }
        row["own_hooks_cpu"] = own
    _judge(row)
    return row


def _noise(rows: dict[str, Any], model: str) -> float | None:
    """The noise floor of the per-step measurement on ``model``: the largest even/odd split
    of any bare run (gated) and the largest A/A ratio, over every entry on that model."""
    values: list[float] = []
    for name, row in rows.items():
        if row.get("model") != model:
            continue
        floor = row.get("per_step_noise_floor_parity_of_bare_runs")
        if floor:
            values += [abs(floor["min"]), abs(floor["max"])]
        if name == AA:
            values += [abs(row["per_step_overhead"]["min"]), abs(row["per_step_overhead"]["max"])]
    return max(values) if values else None


def _judge(row: dict[str, Any], noise: float | None = None) -> None:
    """Adds the per-step verdict and the validation cadence that keeps the total <= 1%.

    The whole-step median decides, unless it lies within the noise floor of the same
    measurement while the callback's own hooks (timed exactly) are under the target. The
    cadence uses the own hooks' per-step and per-validation CPU (exact; the whole-step
    per-validation difference is reported beside it as a check).
    """
    whole = row["per_step_overhead"]["median"]
    own = row.get("own_hooks_cpu")
    noise = noise or 0.0
    own_step = own["per_step_fraction"] if own else max(whole, 0.0)
    row["per_step_meets_target"] = whole <= TARGET or (
        own is not None and own_step <= TARGET and whole - TARGET <= noise
    )
    per_val = own["per_validation_ms"] if own else row["per_validation_cpu_ms"]["median"]
    budget = TARGET - max(own_step, 0.0)
    cadence: Any
    if not math.isfinite(per_val):
        cadence = "no validation measured"
    elif per_val <= 0:
        cadence = 1
    elif budget <= 0:
        cadence = None
    else:
        cadence = math.ceil(per_val / (row["cpu_ms_per_step_bare"] * budget))
    row["min_steps_per_validation_for_target"] = cadence


def _verdict(row: dict[str, Any], floor: float | None) -> str:
    """The target verdict of one callback, in words (own hooks, whole step, noise floor)."""
    own = row.get("own_hooks_cpu", {}).get("per_step_fraction")
    ab = row["per_step_overhead"]["median"]
    parts = [f"whole step {ab:+.2%} (median of {row['repeats']} pairs)"]
    if own is not None:
        parts.append(f"own hooks {own:+.2%} per step")
    if floor is not None:
        parts.append(f"noise floor +-{floor:.2%}")
    if ab <= TARGET and (own is None or own <= TARGET):
        head = "meets <= 1% per step"
    elif row["per_step_meets_target"]:
        head = (
            "meets <= 1% per step by its own hooks' CPU (exact); the whole-step median is "
            "above 1% but within the noise floor of the same runs"
        )
    else:
        head = "misses <= 1% per step"
    cadence = row["min_steps_per_validation_for_target"]
    tail = ""
    if isinstance(cadence, str):
        pass
    elif cadence is None:
        tail = "; no validation cadence brings it under 1%"
    elif cadence > 1:
        per_val = row.get("own_hooks_cpu", {}).get("per_validation_ms")
        tail = (
            f"; per validation {per_val:.1f} ms CPU in its hooks (whole-step difference "
            f"{row['per_validation_cpu_ms']['median']:.1f} ms): <= 1% overall at one "
            f"validation every >= {cadence} optimizer steps"
        )
    return f"{head}: " + ", ".join(parts) + tail


def write(rows: dict[str, Any], args: argparse.Namespace) -> None:
    """Writes the JSON (after every callback, so a cut-short run keeps its rows)."""
    noise = {m: _noise(rows, m) for m in sorted({row.get("model", "") for row in rows.values()})}
    for row in rows.values():
        _judge(row, noise[row.get("model", "")])
    verdict = {
        name: _verdict(row, noise[row.get("model", "")]) for name, row in rows.items() if name != AA
    }
    result = {
        "benchmark": "whole-step overhead per callback vs the bare loop (interleaved pairs)",
        "setting": {
            "model": f"tiny Llama classifier ({args.layers} layers, hidden {args.hidden}); "
            "DARTS+: the recipe's DARTS search (c=4, 3 cells, no accumulation)",
            "data": f"sklearn digits as 64 tokens, batch {args.batch_size}, 128 held out",
            "precision": "bf16-mixed",
            "accumulate_grad_batches": args.accumulate,
            "epochs": args.epochs,
            "validation": "every epoch end",
            "repeats": args.repeats,
            "device": args.device,
            "threads": args.threads,
            "logging": "Lightning defaults (log_every_n_steps=50, default logger: CSV)",
            "clock": "training thread CPU time (time.thread_time); wall time for reference",
        },
        "target": f"<= {TARGET} overhead per optimizer step per callback",
        "noise_floor": noise,
        "noise_floor_is": "per model: the largest |even/odd| split of a bare run (gated) or "
        "|A/A ratio|",
        "verdict": verdict,
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "lightning": pl.__version__,
            "cpu": platform.processor() or platform.machine(),
        },
        "callbacks": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=5, help="epochs per run")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--accumulate", type=int, default=4)
    parser.add_argument(
        "--darts-batches", type=int, default=12, help="DARTS+: training batches per epoch"
    )
    parser.add_argument("--hidden", type=int, default=128, help="the Llama's hidden size")
    parser.add_argument("--layers", type=int, default=2, help="the Llama's layers")
    parser.add_argument("--repeats", type=int, default=6, help="bare/with pairs per callback")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="*", default=None, help="callbacks to measure")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--merge", action="store_true", help="update the rows of --out only")
    parser.add_argument(
        "--cpu", type=int, default=None, help="pin both threads of a pair to this core"
    )
    parser.add_argument(
        "--gate",
        action="store_true",
        help="per-step overhead within each run: the callback's per-step hooks run on even "
        "optimizer steps only, and even steps are compared with odd ones",
    )
    parser.add_argument("--verbose", action="store_true", help="print every run")
    parser.add_argument("--dry-run", action="store_true", help="1 pair of 1-epoch runs each")
    args = parser.parse_args()
    if args.dry_run:
        args.epochs, args.repeats = 1, 1
    torch.set_num_threads(args.threads)
    import logging
    import warnings

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    names = args.only if args.only is not None else [n for n in callbacks() if n not in REFERENCE]
    rows: dict[str, Any] = {}
    if args.merge and args.out.exists():
        rows = json.loads(args.out.read_text()).get("callbacks", {})
    for name in names:
        rows[name] = measure(name, args)
        print(name, json.dumps({k: v for k, v in rows[name].items() if k != "own_hooks_cpu"}))
        print(flush=True)
        write(rows, args)
    write(rows, args)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
