"""An Optuna sweep's runs in the legend and the tables: the parameter values that differ,
rounded, never the trial's internal identity (first-day item of issue 27)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from eecontrol.report.artifacts import RunArtifacts, label_runs, sort_by_objective
from eecontrol.report.console import make_console
from eecontrol.report.html import write_sweep_page
from eecontrol.report.plots import plot_sweep, sweep_figure
from eecontrol.report.sweep_summary import sweep_table
from eecontrol.sweep.liveness import owner_id
from eecontrol.sweep.options import config_text

# what two eecontrol_optuna trials' .hydra/overrides.yaml hold: the sampled values (Optuna's
# floats in full), the command line's own override, the trial's identity
TRIALS = [
    {"model.optimizer.lr": 0.0012345678901234, "model.optimizer.weight_decay": 3.4567891e-05},
    {"model.optimizer.lr": 0.0098765432101234, "model.optimizer.weight_decay": 0.0001},
    {"model.optimizer.lr": 0.00056789, "model.optimizer.weight_decay": 0.0001},
]


def _optuna_runs(tmp_path: Path) -> list[RunArtifacts]:
    runs = []
    for number, params in enumerate(TRIALS):
        ident = {
            "study": "digits-lr",
            "monitor": "val/acc",
            "report_step": "check",
            "pruner": {"_target_": "optuna.pruners.MedianPruner", "n_warmup_steps": 2},
            "parent": owner_id(),
            "number": number,
        }
        path = tmp_path / str(number)
        path.mkdir(parents=True)
        art = RunArtifacts(
            path=path, metrics={"step": [0.0, 1.0, 2.0], "val/acc": [0.3, 0.5, 0.6 + number / 10]}
        )
        art.overrides = [
            *(f"{k}={v!r}" for k, v in params.items()),
            "hparams_search=digits_optuna",
            f"++optuna_trial={config_text(ident)}",
        ]
        art.summary = {"objective": 0.6 + number / 10, "optimized_metric": "val/acc"}
        runs.append(art)
    label_runs(runs)
    return sort_by_objective(runs)


def test_sweep_legend_names_runs_by_the_values_that_differ_and_fits_the_figure(tmp_path):
    runs = _optuna_runs(tmp_path)
    fig, drawn = sweep_figure(runs, "val/acc")
    try:
        assert drawn == 3
        legend = fig.axes[0].get_legend()
        assert legend is not None
        texts = [t.get_text() for t in legend.get_texts()]
        assert texts == [
            "lr=0.0005679 weight_decay=0.0001",
            "lr=0.009877 weight_decay=0.0001",
            "lr=0.001235 weight_decay=3.457e-05",
        ]  # best first, keys after their shared prefix, 4 significant digits
        fig.canvas.draw()
        box, page = legend.get_window_extent(), fig.bbox
        assert box.x0 >= page.x0 and box.x1 <= page.x1 + 1, (box, page)  # not cut
    finally:
        plt.close(fig)
    plot = plot_sweep(runs, tmp_path / "report", "val/acc")
    assert plot is not None and plot.path.stat().st_size > 0


@pytest.mark.parametrize("table", ["console", "html"])
def test_sweep_tables_hide_the_trial_identity_and_round_values(tmp_path, table, monkeypatch):
    runs = _optuna_runs(tmp_path)
    if table == "console":
        monkeypatch.delenv("COLUMNS", raising=False)
        console = make_console()
        with console.capture() as cap:
            console.print(sweep_table(runs))
        text = cap.get()
    else:
        page = write_sweep_page(tmp_path, runs, [], tmp_path / "report").read_text()
        text = page.split("<table class='runs'>")[1].split("</table>")[0]
    assert "model.optimizer.lr=0.0005679" in text and "model.optimizer.lr=0.009877" in text
    assert "weight_decay=3.457e-05" in text
    assert "0.0012345678901234" not in text and "3.4567891e-05" not in text  # rounded
    assert "optuna_trial" not in text and "MedianPruner" not in text  # internal identity
    assert "hparams_search" not in text  # shared by every run


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("0.0012345678901234", "0.001235"),
        ("3.4567891e-05", "3.457e-05"),
        ("0.1", "0.1"),  # short: the user's spelling is kept
        ("1.0", "1.0"),
        ("1e-3", "1e-3"),
        ("12345678", "12345678"),  # an integer is never rounded
        ("nan", "nan"),
        ("adamw", "adamw"),
        ("'0.5e'", "'0.5e'"),
    ],
)
def test_round_number_rounds_only_long_decimals(text, shown):
    from eecontrol.report.artifacts import round_number

    assert round_number(text) == shown


def test_legend_keys_keep_enough_of_a_dotted_name_to_tell_them_apart(tmp_path):
    runs = []
    for i in range(2):
        art = RunArtifacts(path=tmp_path / str(i))
        art.overrides = [f"model.encoder.dropout={0.1 * (i + 1)}", f"model.decoder.dropout={i}"]
        runs.append(art)
    label_runs(runs)
    assert [r.legend_name for r in runs] == [
        "encoder.dropout=0.1 decoder.dropout=0",
        "encoder.dropout=0.2 decoder.dropout=1",
    ]
    assert runs[0].display_name == "model.encoder.dropout=0.1 model.decoder.dropout=0"
