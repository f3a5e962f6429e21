"""The end-of-sweep table, the console width off a terminal, a fast `eecontrol --help`."""

from __future__ import annotations

import json
import sys
import textwrap

from omegaconf import OmegaConf

from eecontrol.callbacks._control import Decision
from eecontrol.report.console import decisions_table, make_console
from eecontrol.report.sweep_summary import SweepSummary
from tests._helpers import run_ok


def _sweep(tmp_path):
    sweep = tmp_path / "multiruns" / "s"
    for job, (lr, acc) in enumerate([(0.1, 0.41234), (0.01, 0.95432), (0.001, 0.7)]):
        run = sweep / str(job)
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text(
            f"- model.optimizer.lr={lr}\n- trainer.max_epochs=3\n- hydra/launcher=joblib\n"
        )
        summary = {"objective": acc, "optimized_metric": "val/acc", "epochs_used": 3.0}
        (run / "summary.json").write_text(json.dumps(summary))
    (sweep / "3" / ".hydra").mkdir(parents=True)  # a job that died before its summary
    (sweep / "3" / ".hydra" / "overrides.yaml").write_text(
        "- model.optimizer.lr=1.0\n- trainer.max_epochs=3\n"
    )
    (sweep / "3" / "decisions.jsonl").write_text("")
    return sweep


def test_multirun_end_prints_one_table_named_by_overrides_best_first(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    sweep = _sweep(tmp_path)
    SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))
    out = capsys.readouterr().out
    assert "4 runs, best first" in out and "objective (val/acc)" in out
    rows = [line for line in out.splitlines() if "model.optimizer.lr=" in line]
    assert [r.split("lr=")[1].split()[0] for r in rows] == ["0.01", "0.001", "0.1", "1.0"]
    assert "0.9543" in out and "0.95432" not in out  # rounded
    assert "trainer.max_epochs" not in out  # shared by every run: not a name
    assert "no summary.json" in out
    assert " 3 " in rows[0] and "3.0" not in rows[0]  # counts as integers


def test_tables_do_not_wrap_at_80_columns_off_a_terminal(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    console = make_console()
    assert not console.is_terminal and console.width == 200
    reason = "a reason long enough to wrap an 80-column table into several lines of text"
    with console.capture() as cap:
        console.print(decisions_table([Decision(3, 1, "GradES", "freeze", reason, {"n": 2.0})]))
    text = cap.get()
    assert reason in text and "n=2," not in text and "n=2" in text


def test_eecontrol_help_and_version_do_not_import_torch():
    code = """
        import sys
        from eecontrol.cli import main
        for argv in (['--help'], ['--version']):
            try:
                main(argv)
            except SystemExit as e:
                assert e.code == 0, e.code
        assert 'torch' not in sys.modules, 'torch imported'
    """
    out = run_ok([sys.executable, "-c", textwrap.dedent(code)], timeout=120)
    assert "eecontrol report" in out.stdout and "eecontrol 0" in out.stdout


def test_two_progress_bars_keep_the_last_listed(caplog):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from eecontrol.report.progress import ControlRichProgressBar, ControlTQDMProgressBar
    from eecontrol.train import _one_progress_bar

    tqdm, checkpoint = ControlTQDMProgressBar(), ModelCheckpoint()
    kept = _one_progress_bar([ControlRichProgressBar(), checkpoint, tqdm])
    assert kept == [checkpoint, tqdm]
    assert "leaving out ControlRichProgressBar" in caplog.text
    assert _one_progress_bar([checkpoint, tqdm]) == [checkpoint, tqdm]


def test_wandb_summary_keeps_one_name_per_value():
    from eecontrol.report.wandb import _already_logged

    logged = {"ces/candidates": 3.0, "val/acc": 0.9}
    assert _already_logged("ConformalEarlyStopping/candidates", 3, logged)
    assert not _already_logged("ConformalEarlyStopping/candidates", 4, logged)
    assert not _already_logged("ConformalEarlyStopping/ces_coverage", 0.9, logged)
    assert not _already_logged("val/acc", 0.9, logged)  # the series itself
