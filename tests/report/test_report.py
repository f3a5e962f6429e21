"""Reports: plots, HTML, console script, progress fields, W&B read back from disk."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import matplotlib.image as mpimg
import pytest

from eecontrol import ConformalEarlyStopping, DropoutSchedule
from eecontrol.callbacks._control import DECISIONS_FILE
from eecontrol.cli import main as cli_main
from eecontrol.report.artifacts import load_run
from eecontrol.report.progress import ControlRichProgressBar, ControlTQDMProgressBar, control_fields
from eecontrol.report.runreport import report_run, report_sweep
from tests._helpers import run_ok, wandb_summary
from tests.conftest import digits_data, digits_model, make_trainer

BIN = Path(sys.executable).parent


def _valid_png(path: Path) -> bool:
    image = mpimg.imread(path)
    return image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50


def _fit(tmp_path: Path, name: str = "run"):
    from lightning.pytorch.loggers import CSVLogger

    root = tmp_path / name
    callbacks = [
        DropoutSchedule(mode="early", cutoff=0.5),
        ConformalEarlyStopping(storage_period=1),
    ]
    trainer = make_trainer(
        root,
        max_epochs=3,
        limit_train_batches=4,
        callbacks=callbacks,
        logger=CSVLogger(root, name="csv", version=0),
        log_every_n_steps=1,
    )
    model, dm = digits_model(), digits_data()
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm, verbose=False)
    return root, trainer


def test_run_report_writes_valid_pngs_and_lists_every_decision(tmp_path):
    root, _ = _fit(tmp_path)
    art, plots, page = report_run(root)
    names = {p.path.name for p in plots}
    assert {"metrics.png", "decisions.png", "rates.png", "ces.png"} <= names
    assert all(_valid_png(p.path) for p in plots)
    text = page.read_text()
    decisions = [json.loads(x) for x in (root / DECISIONS_FILE).read_text().splitlines()]
    assert len(decisions) == len(art.decisions) >= 4
    assert text.count("<tr><td>") == len(decisions)
    for d in decisions:
        assert f"<td>{d['action']}</td>" in text
    assert text.count("data:image/png;base64,") == len(plots)  # self-contained


def test_cli_report_on_run_and_sweep(tmp_path, capsys):
    for i in range(2):
        _fit(tmp_path / "sweep", name=str(i))
    assert cli_main(["report", str(tmp_path / "sweep" / "0")]) == 0
    assert "eecontrol decisions" in capsys.readouterr().out
    runs, plots, _page = report_sweep(tmp_path / "sweep", metric="val/acc")
    assert [r.name for r in runs] == ["0", "1"] and _valid_png(plots[0].path)
    assert cli_main(["report", str(tmp_path / "sweep")]) == 0
    assert (tmp_path / "sweep" / "report" / "report.html").exists()
    assert cli_main(["report", str(tmp_path / "missing")]) == 2


def test_progress_fields_reach_both_progress_bars(tmp_path):
    _root, trainer = _fit(tmp_path)
    fields = control_fields(trainer)
    assert fields == {"dropout p": "0", "ces": "3 cand"}
    for bar in (ControlRichProgressBar(), ControlTQDMProgressBar()):
        metrics = bar.get_metrics(trainer, trainer.lightning_module)
        assert metrics["ces"] == "3 cand"


def test_malformed_journal_is_a_clear_error(tmp_path):
    (tmp_path / DECISIONS_FILE).write_text('{"step": 1}\n')
    with pytest.raises(ValueError, match=r"decisions.jsonl:1: not a decision record"):
        load_run(tmp_path)


@pytest.mark.e2e
def test_wandb_offline_run_holds_decisions_summary_and_plots(tmp_path):
    """A real eecontrol-train run; the W&B run is read back from disk (no server)."""
    env = {**os.environ, "WANDB_MODE": "offline", "COLUMNS": "200"}
    run_ok(
        [BIN / "eecontrol-train", "experiment=digits_ces", "trainer.max_epochs=2"],
        cwd=tmp_path,
        env=env,
        tail=4000,
    )
    run = next((tmp_path / "logs" / "train" / "runs").iterdir())
    wandb_dir = next((run / "wandb").glob("offline-run-*"))
    summary = wandb_summary(wandb_dir, BIN)
    for key in (
        "objective",
        "best_so_far",
        "epochs_used",
        "stop_reason",
        "ConformalEarlyStopping/ces_coverage",
    ):
        assert key in summary, key
    table_files = list((wandb_dir / "files" / "media" / "table").rglob("decisions*.table.json"))
    assert len(table_files) == 1
    table = json.loads(table_files[0].read_text())
    assert table["columns"] == ["step", "epoch", "callback", "action", "reason", "evidence"]
    journal = (run / DECISIONS_FILE).read_text().splitlines()
    assert [row[3] for row in table["data"]] == [json.loads(x)["action"] for x in journal]
    images = list((wandb_dir / "files" / "media" / "images").rglob("*.png"))
    assert len(images) >= 3 and all(_valid_png(p) for p in images)
    assert (run / "report" / "report.html").exists() and (run / "summary.json").exists()


def test_method_plots_from_real_runs(tmp_path):
    """GradES freeze timeline and the learning-curve band, from real short fits."""
    from tests.reliability.specs import SPECS

    expected = {"grades": "grades_timeline.png", "learning_curve_stopping": "learning_curve.png"}
    for name, png in expected.items():
        spec = SPECS[name]
        root = tmp_path / name
        make_trainer(root, callbacks=spec.callbacks(), **spec.trainer).fit(
            spec.model(), datamodule=digits_data()
        )
        _, plots, page = report_run(root)
        written = {p.path.name: p for p in plots}
        assert png in written and _valid_png(written[png].path), (name, sorted(written))
        assert "data:image/png;base64," in page.read_text()
