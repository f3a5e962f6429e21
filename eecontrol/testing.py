"""The conformance kit every eecontrol callback must pass (used by the test suite).

Each check raises ``AssertionError`` with a message saying what broke. A new callback's
test module calls :func:`check_callback_conformance` with a factory, a few valid argument
sets and a table of invalid arguments.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher

from eecontrol.callbacks._control import ControlCallback


def quiet_trainer_kwargs(root: str | os.PathLike[str], accelerator: str = "cpu") -> dict[str, Any]:
    """Trainer arguments for a run on one device that writes into ``root`` and prints
    nothing: no logger, checkpoint, progress bar, model summary or sanity check.

    Args:
        root: the Trainer's ``default_root_dir``.
        accelerator: the Trainer's accelerator (one device of it).

    Returns:
        A new dict; add or override Trainer arguments in it.
    """
    return {
        "default_root_dir": str(root),
        "accelerator": accelerator,
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
    }


def _assert_primitive(value: Any, path: str) -> None:
    """Checks that state is made of primitives, tensors, lists and str-keyed dicts only."""
    if value is None or isinstance(value, bool | int | float | str | torch.Tensor):
        return
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _assert_primitive(v, f"{path}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            assert isinstance(k, str | int), f"state key {path}.{k!r} is not a str/int"
            _assert_primitive(v, f"{path}.{k}")
        return
    raise AssertionError(f"state {path} holds a {type(value).__name__}, not a primitive or tensor")


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def roundtrip_state(callback: ControlCallback) -> dict[str, Any]:
    """Saves the callback's state with ``torch.save`` and loads it with ``weights_only=True``."""
    buffer = io.BytesIO()
    torch.save(callback.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def check_state_roundtrip(callback: ControlCallback, fresh: ControlCallback) -> None:
    """State survives ``torch.save``/``torch.load(weights_only=True)`` into a fresh instance."""
    state = callback.state_dict()
    _assert_primitive(state, type(callback).__name__)
    loaded = roundtrip_state(callback)
    assert _equal(loaded, state), "state changed through torch.save/torch.load(weights_only=True)"
    fresh.load_state_dict(loaded)
    assert _equal(fresh.state_dict(), state), "load_state_dict(state_dict()) is not the identity"


def check_callback_conformance(
    factory: Callable[..., ControlCallback],
    valid: Sequence[Mapping[str, Any]],
    invalid: Sequence[tuple[Mapping[str, Any], str, str]],
    after_fit: tuple[ControlCallback, Mapping[str, Any]] | None = None,
) -> None:
    """Runs every conformance check on a callback class.

    Args:
        factory: builds the callback from keyword arguments (usually the class).
        valid: at least two argument sets that must give distinct ``state_key`` values.
        invalid: ``(kwargs, argument name, fragment of the valid range)`` rows; each must
            raise ``ValueError`` at construction naming the argument and its valid range.
        after_fit: optionally, an instance that took part in a real fit (non-trivial
            state) and the keyword arguments it was built with.
    """
    instances = [factory(**kw) for kw in valid]
    assert len(instances) >= 2, "give at least two valid argument sets"
    keys = [cb.state_key for cb in instances]
    assert len(set(keys)) == len(keys), f"state_key is not unique across argument sets: {keys}"
    for kw, cb in zip(valid, instances):
        assert isinstance(cb, ControlCallback), f"{type(cb).__name__} is not a ControlCallback"
        check_state_roundtrip(cb, factory(**kw))
        clone = pickle.loads(pickle.dumps(cb))
        assert clone.state_key == cb.state_key, "state_key changed through pickle"
    if after_fit is not None:
        fitted, kwargs = after_fit
        check_state_roundtrip(fitted, factory(**kwargs))
        pickle.loads(pickle.dumps(fitted))
    for kwargs, argument, valid_range in invalid:
        try:
            factory(**kwargs)
        except ValueError as err:
            message = str(err)
            assert argument in message, (
                f"error for {dict(kwargs)} does not name `{argument}`: {message}"
            )
            assert valid_range in message, (
                f"error for {dict(kwargs)} does not state the valid range {valid_range!r}: {message}"
            )
        else:
            raise AssertionError(
                f"{dict(kwargs)} was accepted; expected a ValueError naming `{argument}`"
            )


class _FullWeightsLauncher(_MultiProcessingLauncher):
    """Sends the full (gathered) weights back to the main process, not rank zero's shards."""

    def _collect_rank_zero_results(self, trainer: Any, results: Any) -> Any:
        import os
        import tempfile

        from lightning.pytorch.strategies.launchers.multiprocessing import _WorkerOutput
        from lightning.pytorch.trainer.states import TrainerFn

        checkpoint_callback = trainer.checkpoint_callback
        best = getattr(checkpoint_callback, "best_model_path", None)
        state_dict = trainer.strategy.lightning_module_state_dict()  # a collective: all ranks
        if self._strategy.local_rank != 0:
            return None
        weights_path = None
        if trainer.state.fn == TrainerFn.FITTING:
            weights_path = os.path.join(tempfile.mkdtemp(), ".temp.ckpt")
            self._strategy.checkpoint_io.save_checkpoint(state_dict, weights_path)
        extra = self.get_extra_results(trainer)
        return _WorkerOutput(best, weights_path, trainer.state, results, extra)


class CPUFSDPStrategy(FSDPStrategy):
    """An ``FSDPStrategy`` that runs on CPU processes (gloo), started by spawning, for tests.

    Lightning refuses ``strategy="fsdp"`` with ``accelerator="cpu"`` (it checks the exact
    class), and its FSDP strategy starts workers by re-running the script, which a test
    cannot do. This subclass passes the check, spawns its workers as ``ddp_spawn`` does and
    returns the full weights to the main process (``ddp_spawn``'s launcher would send rank
    zero's shards).

    Example::

        trainer = L.Trainer(accelerator="cpu", devices=2, strategy=CPUFSDPStrategy())

    Args:
        **kwargs: passed to ``FSDPStrategy`` (``process_group_backend`` defaults to gloo).
    """

    strategy_name = "cpu_fsdp_spawn"

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("process_group_backend", "gloo")
        super().__init__(**kwargs)

    def _configure_launcher(self) -> None:
        self._launcher = _FullWeightsLauncher(self, start_method="spawn")

    def lightning_module_state_dict(self) -> dict[str, Any]:
        # Lightning gathers with offload_to_cpu=True, which crashes (SIGSEGV) when the
        # parameters already live on the CPU; gather in place instead.
        from torch.distributed.fsdp import FullStateDictConfig, StateDictType
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        config = FullStateDictConfig(offload_to_cpu=False, rank0_only=False)
        assert self.model is not None
        with FSDP.state_dict_type(self.model, StateDictType.FULL_STATE_DICT, config):
            return self.model.state_dict()

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        # torch's FSDP wants an accelerator unless `device_id` names the CPU explicitly;
        # Lightning passes the root device's index, which is None on CPU.
        from torch.distributed.fsdp import FullyShardedDataParallel

        if any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
            return super()._setup_model(model)
        return FullyShardedDataParallel(
            module=model,
            cpu_offload=self.cpu_offload,
            mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy,
            device_id=torch.device("cpu"),
            **self.kwargs,
        )
