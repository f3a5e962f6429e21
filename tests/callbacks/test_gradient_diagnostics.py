"""GradientDiagnostics measures without changing training."""

from __future__ import annotations

import torch

from eecontrol.callbacks.gradient_diagnostics import GradientDiagnostics
from eecontrol.testing import check_callback_conformance
from tests.conftest import digits_data, digits_model, make_trainer


def _train(tmp_path, callbacks):
    torch.manual_seed(0)
    model = digits_model(dropout=0.3)
    make_trainer(tmp_path, max_epochs=2, limit_train_batches=4, callbacks=callbacks).fit(
        model, datamodule=digits_data()
    )
    return model


def test_measures_and_leaves_training_unchanged(tmp_path):
    diag = GradientDiagnostics(every_n_steps=3, num_batches=3)
    with_diag = _train(tmp_path / "a", [diag])
    without = _train(tmp_path / "b", [])
    for p, q in zip(with_diag.parameters(), without.parameters()):
        assert torch.equal(p, q), "the diagnostic changed training"
    assert [h["step"] for h in diag.history] == [0, 3, 6]
    for h in diag.history:
        assert 0.0 < h["direction_variance"] < 1.0 and 0.0 < h["direction_error"] < 1.0
    check_callback_conformance(
        GradientDiagnostics,
        valid=[{"every_n_steps": 5}, {"every_n_steps": 7, "num_batches": 4}],
        invalid=[
            ({"every_n_steps": 0}, "`every_n_steps`", "[1, inf)"),
            ({"num_batches": 1}, "`num_batches`", "[2, inf)"),
            ({"max_full_batches": 0}, "`max_full_batches`", "[1, inf)"),
        ],
        after_fit=(diag, {"every_n_steps": 3, "num_batches": 3}),
    )
