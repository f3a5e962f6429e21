"""The bad-input matrix: every case gives a clear error (or a documented warning).

Each row: an id, what is wrong, how to trigger it, and the message it must produce
(naming the argument and the valid range where there is one). docs/reliability.md's
section lists the same ids (checked by ``test_readme_lists_every_case``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from eecontrol.recipes.digits import DigitsClassifier, DigitsCNN, DigitsMLP
from eecontrol.recipes.outliers import DigitsOutlierDataModule
from eecontrol.recipes.regression import RegressionDataModule
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from torch import nn

from eecontrol import (
    ConformalEarlyStopping,
    ConformalPredictor,
    CurveStore,
    DARTSPlusStopping,
    DropoutSchedule,
    GradES,
    LearningCurvePruner,
    LearningCurveStopping,
)
from eecontrol.cli import main as cli_main
from eecontrol.core import conformal as core
from eecontrol.report.artifacts import load_run
from eecontrol.report.runreport import report_sweep
from eecontrol.resume import ResumableCheckpoint, resume_overrides, rewrite_argv
from eecontrol.train import _checkpoint_path, _OptimizedMetricCheck
from tests.conftest import digits_data, digits_model, make_trainer

README = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"


@dataclass(frozen=True)
class Case:
    """One bad input.

    Args:
        id: a stable name (listed in the README).
        what: what is wrong, in words.
        trigger: does the bad thing; receives a temporary directory.
        expected: a regex the error (or warning) message must match.
        warning: True if the documented outcome is a warning, not an error.
    """

    id: str
    what: str
    trigger: Callable[[Path], object]
    expected: str
    warning: bool = False
    error: type[Exception] = ValueError


def _fit(tmp: Path, callbacks: list, model: nn.Module | None = None, **kwargs) -> None:
    trainer = make_trainer(
        tmp, **{"max_epochs": 2, "limit_train_batches": 2, "callbacks": callbacks, **kwargs}
    )
    trainer.fit(model or digits_model(), datamodule=digits_data())


class _Plateau(DigitsClassifier):
    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters())
        return {
            "optimizer": opt,
            "lr_scheduler": {
                "scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(opt),
                "monitor": "val/loss",
            },
        }


class _NaNOutputs(DigitsClassifier):
    def forward(self, x):
        return super().forward(x) * math.nan


def _ces_run(tmp: Path) -> ConformalEarlyStopping:
    ces = ConformalEarlyStopping()
    _fit(
        tmp, [ces, ModelCheckpoint(dirpath=tmp / "ckpt", save_last=True)], enable_checkpointing=True
    )
    return ces


def _missing_candidates(tmp: Path) -> None:
    _ces_run(tmp)
    (tmp / "ces" / "candidate_epoch0000.pt").unlink()
    make_trainer(
        tmp, max_epochs=3, limit_train_batches=2, callbacks=[ConformalEarlyStopping()]
    ).fit(digits_model(), datamodule=digits_data(), ckpt_path=tmp / "ckpt" / "last.ckpt")


def _holdout_mismatch(tmp: Path) -> None:
    _ces_run(tmp)
    make_trainer(
        tmp, max_epochs=3, limit_train_batches=2, callbacks=[ConformalEarlyStopping()]
    ).fit(
        digits_model(),
        datamodule=digits_data(val_fraction=0.2),
        ckpt_path=tmp / "ckpt" / "last.ckpt",
    )


def _changed_config(tmp: Path) -> None:
    ces = ConformalEarlyStopping(alpha=0.1)
    ConformalEarlyStopping(alpha=0.2).load_state_dict(ces.state_dict())


def _corrupted_checkpoint(tmp: Path) -> None:
    _ces_run(tmp)
    path = tmp / "ckpt" / "last.ckpt"
    path.write_bytes(path.read_bytes()[:200])
    make_trainer(
        tmp, max_epochs=3, limit_train_batches=2, callbacks=[ConformalEarlyStopping()]
    ).fit(digits_model(), datamodule=digits_data(), ckpt_path=path)


class _NaNMetric(DigitsClassifier):
    def validation_step(self, batch, batch_idx):
        super().validation_step(batch, batch_idx)
        self.log("val/score", math.nan)


def _curve_nan_metric(tmp: Path) -> None:
    cb = LearningCurveStopping(monitor="val/score", mode="max", check_finite=False)
    _fit(tmp, [cb], model=_NaNMetric(net=DigitsCNN()))


def _locked_store(tmp: Path) -> None:
    import sqlite3

    path = tmp / "curves.db"
    CurveStore(path)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
    try:
        CurveStore(path, timeout=0.2, retries=1)
    finally:
        holder.close()


def _foreign_state(tmp: Path) -> None:
    DropoutSchedule().load_state_dict({"wait_count": 3, "best_score": torch.tensor(0.1)})


def _report_malformed(tmp: Path) -> None:
    (tmp / "decisions.jsonl").write_text("{}\n")
    load_run(tmp)


def _report_missing(tmp: Path) -> None:
    code = cli_main(["report", str(tmp / "nope")])
    raise ValueError(f"exit code {code}") if code == 2 else AssertionError("accepted")


def _foreign_sqlite(tmp: Path) -> None:
    import sqlite3

    with sqlite3.connect(tmp / "app.db") as conn:
        conn.execute("CREATE TABLE customers (id INTEGER)")
    CurveStore(tmp / "app.db")


def _empty_store(tmp: Path) -> Path:
    CurveStore(tmp / "curves.db")
    return tmp / "curves.db"


def _truncated_journal(tmp: Path) -> None:
    line = '{"step": 0, "epoch": 0, "callback": "C", "action": "a", "reason": "r", "evidence": {}}'
    (tmp / "decisions.jsonl").write_text(line + "\n" + line[:30])
    assert len(load_run(tmp).decisions) == 1


def _damaged_sweep(tmp: Path) -> None:
    line = '{"step": 0, "epoch": 0, "callback": "C", "action": "a", "reason": "r", "evidence": {}}'
    for job, text in (("0", line + "\n"), ("1", "{}\n" + line + "\n")):
        (tmp / job).mkdir()
        (tmp / job / "decisions.jsonl").write_text(text)
    runs, _, _ = report_sweep(tmp)
    assert len(runs) == 1


def _bad_summary(tmp: Path) -> None:
    (tmp / "summary.json").write_text('{"objective": 0.9')
    load_run(tmp)


CASES = [
    # DropoutSchedule: constructor
    Case(
        "dropout-p-high",
        "DropoutSchedule p = 1",
        lambda t: DropoutSchedule(p=1.0),
        r"`p` must be a number in \[0.0, 1.0\)",
    ),
    Case(
        "dropout-p-negative",
        "DropoutSchedule p < 0",
        lambda t: DropoutSchedule(p=-0.1),
        r"`p` must be a number in \[0.0, 1.0\)",
    ),
    Case(
        "dropout-p-nan",
        "DropoutSchedule p = NaN",
        lambda t: DropoutSchedule(p=math.nan),
        r"`p` must be a finite number",
    ),
    Case(
        "dropout-mode",
        "unknown mode string",
        lambda t: DropoutSchedule(mode="middle"),
        r"`mode` must be one of \['standard', 'early', 'late'\]",
    ),
    Case(
        "dropout-schedule",
        "unknown schedule",
        lambda t: DropoutSchedule(schedule="cosine"),
        r"`schedule` must be one of",
    ),
    Case(
        "dropout-cutoff-fraction",
        "cutoff fraction > 1",
        lambda t: DropoutSchedule(cutoff=1.5),
        r"`cutoff` must be a number in \[0.0, 1.0\]",
    ),
    Case(
        "dropout-cutoff-negative",
        "negative cutoff in epochs",
        lambda t: DropoutSchedule(cutoff=-2, cutoff_unit="epochs"),
        r"`cutoff` must be a number in \[0.0, inf\)",
    ),
    Case(
        "dropout-cutoff-missing",
        "early mode without a cutoff",
        lambda t: DropoutSchedule(cutoff=None),
        r"`cutoff` is required",
    ),
    Case(
        "dropout-cutoff-unit",
        "unknown cutoff unit",
        lambda t: DropoutSchedule(cutoff_unit="batches"),
        r"`cutoff_unit` must be one of",
    ),
    Case(
        "dropout-target",
        "unknown target",
        lambda t: DropoutSchedule(target="dropblock"),
        r"`target` must be one of",
    ),
    Case(
        "dropout-drop-path-rate",
        "drop_path_rate >= 1",
        lambda t: DropoutSchedule(drop_path_rate=1.2),
        r"`drop_path_rate` must be a number in \[0.0, 1.0\)",
    ),
    Case(
        "dropout-float-attributes",
        "float_attributes given as one string",
        lambda t: DropoutSchedule(float_attributes="dropout"),
        r"`float_attributes` must be a list",
    ),
    # DropoutSchedule: at fit
    Case(
        "dropout-cutoff-beyond",
        "cutoff beyond training (12 of 2 epochs)",
        lambda t: _fit(t, [DropoutSchedule(cutoff=12, cutoff_unit="epochs")]),
        r"lies beyond training \(2 epochs.*valid range",
    ),
    Case(
        "dropout-no-target",
        "model without any dropout",
        lambda t: _fit(
            t,
            [DropoutSchedule()],
            DigitsClassifier(net=nn.Sequential(nn.Flatten(), nn.Linear(64, 10))),
        ),
        r"no dropout target found.*setters \['torch_dropout', 'float_attribute'\]",
    ),
    Case(
        "dropout-identity-droppath",
        "drop_path target, model built with rate 0 (Identity)",
        lambda t: _fit(t, [DropoutSchedule(target="drop_path")]),
        r"drop_path_rate > 0",
    ),
    Case(
        "dropout-unbounded",
        "no max_epochs / max_steps",
        lambda t: _fit(t, [DropoutSchedule()], max_epochs=-1),
        r"finite training length",
    ),
    # ConformalEarlyStopping: constructor
    Case(
        "ces-task",
        "unknown task",
        lambda t: ConformalEarlyStopping(task="ranking"),
        r"`task` must be one of",
    ),
    Case(
        "ces-storage-zero",
        "storage_period = 0",
        lambda t: ConformalEarlyStopping(storage_period=0),
        r"`storage_period` must be an integer in \[1, inf\)",
    ),
    Case(
        "ces-storage-float",
        "storage_period = 1.5",
        lambda t: ConformalEarlyStopping(storage_period=1.5),
        r"`storage_period` must be an integer",
    ),
    Case(
        "ces-storage-start-negative",
        "storage_start = -2",
        lambda t: ConformalEarlyStopping(storage_start=-2),
        r"`storage_start` must be an integer in \[0, inf\)",
    ),
    Case(
        "ces-storage-start-fraction",
        "storage_start = 1.5 (a float is a fraction of max_epochs)",
        lambda t: ConformalEarlyStopping(storage_start=1.5),
        r"`storage_start` must be an integer number of epochs .* fraction of max_epochs in "
        r"\[0.0, 1.0\), got 1.5",
    ),
    Case(
        "ces-alpha-zero",
        "alpha = 0",
        lambda t: ConformalEarlyStopping(alpha=0.0),
        r"`alpha` must be a number in \(0.0, 1.0\)",
    ),
    Case(
        "ces-alpha-one",
        "alpha = 1",
        lambda t: ConformalEarlyStopping(alpha=1.0),
        r"`alpha` must be a number in \(0.0, 1.0\)",
    ),
    Case(
        "ces-alpha-nan",
        "alpha = NaN",
        lambda t: ConformalEarlyStopping(alpha=math.nan),
        r"`alpha` must be a finite number in \(0.0, 1.0\)",
    ),
    Case(
        "ces-batch",
        "holdout_batch_size = 0",
        lambda t: ConformalEarlyStopping(holdout_batch_size=0),
        r"`holdout_batch_size` must be an integer in \[1, inf\)",
    ),
    Case(
        "ces-seed",
        "negative aps_seed",
        lambda t: ConformalEarlyStopping(aps_seed=-1),
        r"`aps_seed` must be an integer in \[0, inf\)",
    ),
    Case(
        "ces-prefixes",
        "train_metric_prefixes given as one string",
        lambda t: ConformalEarlyStopping(train_metric_prefixes="train"),
        r"`train_metric_prefixes` must be a list",
    ),
    # ConformalEarlyStopping: at fit and after
    Case(
        "ces-early-stopping",
        "EarlyStopping on a hold-out metric in the same Trainer",
        lambda t: _fit(t, [ConformalEarlyStopping(), EarlyStopping(monitor="val/loss")]),
        r"EarlyStopping\(monitor='val/loss'\).*void the conformal guarantee",
    ),
    Case(
        "ces-plateau",
        "ReduceLROnPlateau on a hold-out metric",
        lambda t: _fit(t, [ConformalEarlyStopping()], _Plateau(net=DigitsCNN())),
        r"ReduceLROnPlateau\(monitor='val/loss'\)",
    ),
    Case(
        "ces-unbounded",
        "no fixed number of epochs",
        lambda t: _fit(t, [ConformalEarlyStopping()], max_epochs=-1),
        r"number of epochs must be fixed in advance",
    ),
    Case(
        "ces-nan-outputs",
        "NaN model outputs on the hold-out set",
        lambda t: _fit(t, [ConformalEarlyStopping()], _NaNOutputs(net=DigitsCNN())),
        r"contain NaN or inf",
    ),
    Case(
        "ces-missing-candidates",
        "resume with a candidate checkpoint deleted",
        _missing_candidates,
        r"stored candidate checkpoints of the resumed run are missing",
    ),
    Case(
        "ces-holdout-mismatch",
        "resume with a different hold-out split",
        _holdout_mismatch,
        r"hold-out set of 270 points, but the hold-out set now has 360",
    ),
    Case(
        "ces-model-mismatch",
        "predictor with another architecture",
        lambda t: (
            _ces_run(t)
            .predictor(DigitsClassifier(net=DigitsMLP()))
            .p_values(torch.zeros(1, 1, 8, 8))
        ),
        r"does not match the stored candidates",
    ),
    Case(
        "ces-wrong-output",
        "intervals asked of a classification predictor",
        lambda t: (
            _ces_run(t).predictor(digits_model()).predict_interval(torch.zeros(1, 1, 8, 8), 0.1)
        ),
        r"intervals are for task='regression'",
    ),
    Case(
        "ces-no-run",
        "predictor from a directory without CES files",
        lambda t: ConformalPredictor.from_run_dir(t, digits_model()),
        r"no holdout.pt under",
        error=FileNotFoundError,
    ),
    # core
    Case(
        "core-alpha",
        "alpha outside (0, 1) in the core",
        lambda t: core.conformal_rank(10, 1.5),
        r"`alpha` must be in \(0, 1\)",
    ),
    Case(
        "core-labels",
        "hold-out label outside [0, K-1]",
        lambda t: core.ces_classification_p_values(
            torch.full((1, 2, 3), 1 / 3), torch.tensor([0, 3]), torch.full((1, 1, 3), 1 / 3)
        ),
        r"must be in \[0, 2\]",
    ),
    Case(
        "core-nan",
        "NaN probabilities",
        lambda t: core.ces_classification_p_values(
            torch.full((1, 2, 3), math.nan), torch.tensor([0, 1]), torch.full((1, 1, 3), 1 / 3)
        ),
        r"non-finite",
    ),
    Case(
        "core-shapes",
        "regression shapes that do not match",
        lambda t: core.ces_regression_intervals(
            torch.zeros(3, 4), torch.zeros(4), torch.zeros(2, 5), 0.1
        ),
        r"shapes must be",
    ),
    Case(
        "core-bh",
        "Benjamini-Hochberg q = 0",
        lambda t: core.benjamini_hochberg(torch.rand(3), 0.0),
        r"`q` must be in \(0, 1\)",
    ),
    # state and checkpoints
    Case(
        "state-foreign",
        "callback state from another callback (Lightning EarlyStopping)",
        _foreign_state,
        r"no 'version' key.*written by another callback or an older eecontrol",
    ),
    Case(
        "state-version",
        "callback state from an unknown version",
        lambda t: DropoutSchedule().load_state_dict({"version": 99}),
        r"state version 99 is not supported",
    ),
    Case(
        "state-changed-config",
        "resume with a changed argument",
        _changed_config,
        r"configuration differs from the checkpoint's.*alpha: 0.1 -> 0.2",
        warning=True,
    ),
    Case(
        "checkpoint-corrupted",
        "resume from a truncated checkpoint file",
        _corrupted_checkpoint,
        r".",
        error=Exception,
    ),
    # GradES
    Case(
        "grades-patterns-none",
        "component patterns matching nothing",
        lambda t: _fit(t, [GradES(patterns=["q_proj", "k_proj"])]),
        r"matches `patterns` \['q_proj', 'k_proj'\]\. Module names seen: \[.*'net\.",
    ),
    Case(
        "grades-tau-negative",
        "GradES tau < 0",
        lambda t: GradES(tau=-0.5),
        r"`tau`.*\[0, inf\) or 'auto'",
    ),
    Case(
        "grades-statistic",
        "unknown GradES statistic",
        lambda t: GradES(statistic="grad_l2"),
        r"`statistic` must be one of \['grad_l1', 'grad_delta_l1', 'weight_delta_l1'\]",
    ),
    Case(
        "grades-grace",
        "GradES grace = 1 (no step left to freeze in)",
        lambda t: GradES(grace=1.0),
        r"`grace`.*\[0.0, 1.0\)",
    ),
    Case(
        "grades-max-frozen",
        "max_frozen_ratio = 0",
        lambda t: GradES(max_frozen_ratio=0.0),
        r"`max_frozen_ratio`.*\(0.0, 1.0\]",
    ),
    # learning-curve stopping, the pruner, the store
    Case(
        "curves-monitor-missing",
        "monitored metric never logged",
        lambda t: _fit(t, [LearningCurveStopping(monitor="val/f1", mode="max")]),
        r"monitor 'val/f1' was not logged\. The check runs in the callbacks' "
        r"on_validation_epoch_end.*before the LightningModule's own.*self\.log in "
        r"validation_step.*available metrics: \[.*'val/acc'",
    ),
    Case(
        "curves-nan-metric",
        "NaN monitored value with check_finite=False",
        _curve_nan_metric,
        r"val/score = nan at check 1 \(check_finite=False: the point is left out",
        warning=True,
    ),
    Case(
        "curves-threshold",
        "in-run threshold = 1",
        lambda t: LearningCurveStopping(threshold=1.0),
        r"`threshold`.*\(0.0, 1.0\)",
    ),
    Case(
        "curves-mode",
        "unknown curve mode",
        lambda t: LearningCurveStopping(mode="maximize"),
        r"`mode` must be one of \['max', 'min'\]",
    ),
    Case(
        "curves-bounds",
        "metric bounds with low >= high",
        lambda t: LearningCurveStopping(bounds=[1.0, 0.0]),
        r"`bounds` must be \[low, high\] with low < high",
    ),
    Case(
        "curves-min-points",
        "min_points below 1 (below the forecaster's own minimum the rule says it is blind)",
        lambda t: LearningCurveStopping(min_points=0),
        r"`min_points`.*\[1, inf\)",
    ),
    Case(
        "pruner-horizon",
        "LearningCurvePruner horizon = 0",
        lambda t: LearningCurvePruner(horizon=0),
        r"`horizon` must be a number in \(0, inf\)",
    ),
    Case(
        "store-locked",
        "curve store whose SQLite file another process holds locked",
        _locked_store,
        r"could not open the curve store sqlite:///.*curves\.db.*database is locked",
        error=RuntimeError,
    ),
    Case(
        "store-unreachable",
        "curve store on a server database that cannot be reached",
        lambda t: CurveStore("postgresql://eecontrol@127.0.0.1:1/curves", retries=1),
        r"could not open the curve store postgresql://eecontrol@127.0.0.1:1/curves",
        error=RuntimeError,
    ),
    # DARTS+
    Case(
        "darts-max-skip",
        "DARTS+ max_skip = 0",
        lambda t: DARTSPlusStopping(max_skip=0),
        r"`max_skip`.*\[1, inf\)",
    ),
    Case(
        "darts-criterion",
        "unknown DARTS+ criterion",
        lambda t: DARTSPlusStopping(criterion="first"),
        r"`criterion` must be one of \['skip', 'stable', 'either', 'both'\]",
    ),
    Case(
        "darts-not-a-search",
        "DARTS+ on a model without architecture weights",
        lambda t: _fit(t, [DARTSPlusStopping()]),
        r"DigitsClassifier lacks \['arch_parameters\(\)', 'op_names'\]",
    ),
    # report and data
    Case(
        "report-malformed",
        "a malformed decisions.jsonl line",
        _report_malformed,
        r"decisions.jsonl:1: not a decision record",
    ),
    Case(
        "report-missing", "eecontrol report on a missing directory", _report_missing, r"exit code 2"
    ),
    Case(
        "data-regression-name",
        "unknown regression data set",
        lambda t: RegressionDataModule("housing"),
        r"`dataset` must be one of \['concrete', 'bio', 'diabetes'\]",
    ),
    Case(
        "data-regression-size",
        "n_total larger than the data",
        lambda t: RegressionDataModule("concrete", n_total=5000).setup(),
        r"`n_total` must be in \[4, 930\]",
    ),
    Case(
        "data-outlier-classes",
        "every digit an inlier",
        lambda t: DigitsOutlierDataModule(inlier_classes=list(range(10))),
        r"`inlier_classes` must be a non-empty proper subset",
    ),
    # checkpoints, resume, the store, the run's objective, the report (issue 13)
    Case(
        "resume-ckpt-last-missing",
        "ckpt_path=last in a run directory without last.ckpt",
        lambda t: _checkpoint_path("last", t),
        r"`ckpt_path=last`: this run directory has no checkpoints/last.ckpt.*resume=<run dir>",
        error=FileNotFoundError,
    ),
    Case(
        "resume-never-checkpointed",
        "resume=<run dir> of a run killed before its first checkpoint",
        lambda t: resume_overrides(str(t), t),
        r"`resume=.*`: .*last\.ckpt does not exist; this run never reached its first checkpoint",
        error=FileNotFoundError,
    ),
    Case(
        "resume-multirun",
        "resume=<run dir> together with -m",
        lambda t: rewrite_argv(["-m", f"resume={t}"], t),
        r"`resume=<run dir>` continues one run; it cannot be used with -m",
    ),
    Case(
        "resume-url",
        "resume=<URL>",
        lambda t: resume_overrides("https://example.org/run", t),
        r"`resume` must be a local run directory, got the URL",
    ),
    Case(
        "checkpoint-every-n-steps",
        "ResumableCheckpoint every_n_train_steps = 0",
        lambda t: ResumableCheckpoint(every_n_train_steps=0),
        r"`every_n_train_steps` must be None or an integer in \[1, inf\)",
    ),
    Case(
        "optimized-metric-missing",
        "optimized_metric=val/f1, never logged: fails at the first validation",
        lambda t: _fit(t, [_OptimizedMetricCheck("val/f1")]),
        r"`optimized_metric=val/f1` is not logged by the model; logged so far: \[.*'val/acc'",
    ),
    Case(
        "dropout-float-attributes-none",
        "float_attributes = None",
        lambda t: DropoutSchedule(float_attributes=None),
        r"`float_attributes` must be a list of attribute names \(\[\] for none\), got None",
    ),
    Case(
        "store-not-a-path",
        "store = 123",
        lambda t: LearningCurveStopping(store=123),
        r"`store` must be a SQLite file path or a database URL string.*got 123",
    ),
    Case(
        "store-study-name",
        "study_name = None",
        lambda t: LearningCurveStopping(study_name=None),
        r"`study_name` must be a non-empty string, got None",
    ),
    Case(
        "store-foreign-sqlite",
        "another application's SQLite database as the store",
        _foreign_sqlite,
        r"`store` .*app\.db is a SQLite database of another application \(tables \['customers'\]\)",
    ),
    Case(
        "store-read-only",
        "a read-only curve store",
        lambda t: CurveStore(
            f"sqlite:///file:{_empty_store(t)}?mode=ro&uri=true", "new", retries=1
        ),
        r"could not open the curve store .*\(the database is read-only.*attempt to write a "
        r"readonly database",
        error=RuntimeError,
    ),
    Case(
        "report-truncated-journal",
        "decisions.jsonl whose last line a killed process left half-written",
        _truncated_journal,
        r"decisions\.jsonl:2: truncated last line left out",
        warning=True,
    ),
    Case(
        "report-sweep-damaged-run",
        "eecontrol report SWEEP_DIR with one damaged run",
        _damaged_sweep,
        r"left out .*/1: .*decisions\.jsonl:1: not a decision record",
        warning=True,
    ),
    Case(
        "report-bad-json",
        "a malformed summary.json",
        _bad_summary,
        r"summary\.json: not valid JSON",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_reported_clearly(case: Case, tmp_path: Path) -> None:
    if case.warning:
        with pytest.warns(UserWarning, match=case.expected):
            case.trigger(tmp_path)
        return
    with pytest.raises(case.error) as err:
        case.trigger(tmp_path)
    assert re.search(case.expected, str(err.value), re.S), f"{case.id}: {err.value}"


def test_corrupted_checkpoint_is_kept_untouched(tmp_path: Path) -> None:
    """A failed resume must not delete or overwrite the checkpoint or the run's files."""
    with pytest.raises(Exception):  # noqa: B017 - torch's own unpickling error
        _corrupted_checkpoint(tmp_path)
    assert (tmp_path / "ckpt" / "last.ckpt").stat().st_size == 200
    assert len(list((tmp_path / "ces").glob("candidate_epoch*.pt"))) == 2


def test_matrix_is_big_enough_and_documented() -> None:
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)
    text = README.read_text()
    missing = [c.id for c in [*CASES, *CES_DARTS_CASES] if f"`{c.id}`" not in text]
    assert not missing, f"docs/reliability.md bad-input table lacks {missing}"


def markdown_table() -> str:
    """The docs/reliability.md table (run this module as a script to print it)."""
    rows = ["| id | bad input | outcome |", "|---|---|---|"]
    for c in [*CASES, *CES_DARTS_CASES]:
        outcome = (
            "warning"
            if c.warning
            else (c.error.__name__ if c.error is not ValueError else "ValueError")
        )
        message = c.expected.replace("\\", "").replace("|", "\\|").replace(".*", " … ")
        rows.append(f"| `{c.id}` | {c.what} | {outcome}: `` {message} `` |")
    return "\n".join(rows)


# --- issue 23 (step-based units) and 25 (silent options): CES and DARTS+ ----------------
# A separate block (ces-darts branch); docs/reliability.md lists these ids too.


def _quantile_single_output(tmp: Path) -> None:
    from eecontrol.recipes.regression import RegressionMLP

    trainer = make_trainer(tmp, max_epochs=2, callbacks=[ConformalEarlyStopping("quantile")])
    trainer.fit(RegressionMLP(num_features=8), datamodule=RegressionDataModule(n_total=200))


def _scripted_darts() -> nn.Module:
    from tests.callbacks.test_darts_plus import ScriptedDarts

    return ScriptedDarts([(0, 0)])


def _stopper_after_ces(tmp: Path) -> None:
    stop = EarlyStopping(monitor="train/loss", patience=100, check_on_train_epoch_end=True)
    _fit(tmp, [ConformalEarlyStopping(), stop])


CES_DARTS_CASES = [
    Case(
        "darts-learnable-ops-empty",
        "DARTSPlusStopping learnable_ops = [] (criterion 2 would rank nothing)",
        lambda t: DARTSPlusStopping(learnable_ops=[]),
        r"`learnable_ops` must be None .* or a non-empty list of op names",
    ),
    Case(
        "darts-none-is-skip",
        "DARTSPlusStopping none_op == skip_op",
        lambda t: DARTSPlusStopping(none_op="skip_connect"),
        r"`none_op` and `skip_op` must be different op names, got 'skip_connect' for both",
    ),
    Case(
        "darts-check-unit",
        "unknown check unit",
        lambda t: DARTSPlusStopping(check_unit="batches"),
        r"`check_unit` must be one of \['epochs', 'validations', 'steps'\]",
    ),
    Case(
        "darts-check-validations-without-validation",
        "check_unit='validations' in a fit without validation",
        lambda t: _fit(
            t,
            [DARTSPlusStopping(check_unit="validations")],
            _scripted_darts(),
            limit_val_batches=0,
        ),
        r"`check_unit`='validations' but this fit runs no validation",
    ),
    Case(
        "ces-storage-unit",
        "unknown storage unit",
        lambda t: ConformalEarlyStopping(storage_unit="batches"),
        r"`storage_unit` must be one of \['epochs', 'steps'\]",
    ),
    Case(
        "ces-start-past-max-steps",
        "storage_start past the end that max_steps sets",
        lambda t: _fit(t, [ConformalEarlyStopping(storage_start=1)], max_steps=2),
        r"`storage_start`=1 .* stores no candidate in a run of 1 epochs; `storage_start` "
        r"must be in \[0, 0\] epochs \(max_steps=2 ends the run",
    ),
    Case(
        "ces-quantile-single-output",
        "a one-output model with task='quantile': fails at setup, before training",
        _quantile_single_output,
        r"task='quantile' needs the lower and upper quantiles, shape \(m, 2\)",
    ),
    Case(
        "ces-alpha-too-small",
        "alpha below 1/(n + 1) for the hold-out size",
        lambda t: _fit(t, [ConformalEarlyStopping(alpha=0.002)]),
        r"alpha=0.002 is too small for 270 hold-out points.* 1/\(n \+ 1\) = 0.00369",
        warning=True,
    ),
    Case(
        "ces-stopper-after",
        "a stopping callback listed after CES",
        _stopper_after_ces,
        r"EarlyStopping is listed after ConformalEarlyStopping",
        warning=True,
    ),
]


@pytest.mark.parametrize("case", CES_DARTS_CASES, ids=[c.id for c in CES_DARTS_CASES])
def test_ces_and_darts_bad_input_is_reported_clearly(case: Case, tmp_path: Path) -> None:
    test_bad_input_is_reported_clearly(case, tmp_path)


if __name__ == "__main__":
    print(markdown_table())
