"""Plots for any metric names, truthful marks, and plot errors as warnings (no training)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.image as mpimg
import pytest

from eecontrol.callbacks._control import Decision
from eecontrol.report import plots as plots_module
from eecontrol.report.artifacts import RunArtifacts, label_runs, sort_by_objective
from eecontrol.report.html import write_sweep_page
from eecontrol.report.plots import make_plots, plot_sweep

NAN = math.nan


def _art(tmp_path: Path, metrics: dict[str, list[float]], decisions=(), name="run") -> RunArtifacts:
    path = tmp_path / name
    path.mkdir(parents=True, exist_ok=True)
    return RunArtifacts(path=path, metrics=metrics, decisions=list(decisions))


def _png_ok(path: Path) -> bool:
    image = mpimg.imread(path)
    return image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50


STEPS = [0.0, 1.0, 2.0, 3.0]


@pytest.mark.parametrize(
    "metrics",
    [
        {"step": STEPS, "val/loss": [1.0, 0.8, NAN, 0.6]},  # loss only (regression, outliers)
        {"step": STEPS, "val/acc": [0.1, 0.5, 0.6, NAN]},  # accuracy only
        {"step": STEPS, "val_loss": [1.0, 0.8, 0.7, 0.6], "val_acc": [0.1, 0.4, 0.5, 0.6]},
        {"step": STEPS, "train_loss_epoch": [2, 1, 0.5, 0.4], "test/mse": [NAN, NAN, NAN, 0.3]},
        {"step": STEPS, "val/$cost$": [1, 2, 3, 4], "val/a$b": [1, 1, 2, 2]},  # mathtext-safe
    ],
    ids=["loss-only", "acc-only", "lightning-style", "mixed", "dollar"],
)
def test_metrics_plot_for_any_metric_names(tmp_path, metrics):
    plots = make_plots(_art(tmp_path, metrics), tmp_path / "out")
    written = {p.path.name: p for p in plots}
    assert "metrics.png" in written, sorted(written)
    assert _png_ok(written["metrics.png"].path)


def test_a_failing_plot_is_a_warning_and_the_others_are_written(tmp_path, monkeypatch):
    def broken(art, out):
        raise RuntimeError("boom")

    monkeypatch.setattr(plots_module, "PLOTTERS", [broken, *plots_module.PLOTTERS])
    art = _art(tmp_path, {"step": STEPS, "val/loss": [1, 0.9, 0.8, 0.7]})
    with pytest.warns(RuntimeWarning, match="broken failed .*RuntimeError: boom"):
        plots = make_plots(art, tmp_path / "out")
    assert [p.path.name for p in plots] == ["metrics.png"]


def test_gradient_diagnostics_plot(tmp_path):
    metrics = {
        "step": STEPS,
        "grad_diag/direction_variance": [NAN, 0.5, NAN, 0.4],
        "grad_diag/direction_error": [NAN, 0.3, NAN, 0.2],
    }
    written = {p.path.name for p in make_plots(_art(tmp_path, metrics), tmp_path / "out")}
    assert "gradient_diagnostics.png" in written


def test_learning_curve_plot_draws_only_its_own_stop(tmp_path):
    art = _art(tmp_path, {})
    art.extra_json["curve_prediction.json"] = {
        "observed": {"x": [1, 2, 3], "y": [0.5, 0.6, 0.65]},
        "monitor": "val/acc",
    }
    other = Decision(3, 1, "ConformalEarlyStopping", "stop", "another callback stopped")
    art.decisions = [other]
    [plot] = [p for p in make_plots(art, tmp_path / "a") if p.path.name == "learning_curve.png"]
    fig_lines = _axvlines_drawn(art, tmp_path / "b")
    assert fig_lines == 0
    art.decisions = [
        Decision(3, 1, "LearningCurveStopping{'monitor': 'val/acc'}", "stop", "won't win")
    ]
    assert _axvlines_drawn(art, tmp_path / "c") == 1
    assert _png_ok(plot.path)


def _axvlines_drawn(art: RunArtifacts, out: Path) -> int:
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    calls = []
    original = plt.Axes.axvline

    def spy(self, *args, **kwargs):
        calls.append(kwargs.get("label"))
        return original(self, *args, **kwargs)

    plt.Axes.axvline = spy
    try:
        plots_module.plot_curve_prediction(art, out)
    finally:
        plt.Axes.axvline = original
    return calls.count("stop")


def test_sweep_runs_named_by_overrides_sorted_rounded(tmp_path):
    runs = []
    for i, (lr, obj) in enumerate([(0.1, 0.5123456), (0.01, 0.9345678), (0.001, 0.7)]):
        art = _art(
            tmp_path,
            {"step": [0.0], "val/acc": [obj]},  # one validation: must still be visible
            [Decision(0, 0, "X", "stop", "why")] if i == 0 else [],
            name=str(i),
        )
        art.overrides = [
            f"model.optimizer.lr={lr}",
            "trainer.max_epochs=1",
            "hydra/launcher=joblib",
        ]
        art.summary = {"objective": obj, "optimized_metric": "val/acc", "epochs_used": 1}
        runs.append(art)
    label_runs(runs)
    assert [r.display_name for r in runs] == [
        "model.optimizer.lr=0.1",
        "model.optimizer.lr=0.01",
        "model.optimizer.lr=0.001",
    ]  # the shared override and Hydra's own are left out
    ordered = sort_by_objective(runs)
    assert [r.name for r in ordered] == ["1", "2", "0"]  # accuracy: highest first
    plot = plot_sweep(ordered, tmp_path / "sweep", "val/acc")
    assert plot is not None and _png_ok(plot.path)
    page = write_sweep_page(tmp_path, ordered, [plot], tmp_path / "sweep").read_text()
    table = page.split("<table class='runs'>")[1].split("</table>")[0]
    assert table.index("lr=0.01") < table.index("lr=0.001") < table.index("lr=0.1")
    assert "0.9346" in table and "0.9345678" not in table  # rounded
    assert table.count("<th>") <= 8  # a few columns: the rest goes into a details cell


def test_loss_objective_sorts_lowest_first(tmp_path):
    runs = []
    for i, obj in enumerate([0.3, 0.1, math.nan]):
        art = _art(tmp_path, {}, name=str(i))
        art.summary = {"objective": obj, "optimized_metric": "val_loss"}
        runs.append(art)
    assert [r.name for r in sort_by_objective(runs)] == ["1", "0", "2"]
