"""Search spaces from Hydra's override grammar (``eecontrol.sweep.space``)."""

from __future__ import annotations

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from eecontrol.sweep.space import (
    format_value,
    parse_search_space,
    same_params,
    trial_overrides,
)


def test_the_grammar_becomes_optuna_distributions():
    space = parse_search_space(
        [
            "lr=tag(log, interval(1e-4, 1e-2))",
            "dropout=interval(0.0, 0.5)",
            "layers=interval(1, 4)",
            "width=choice(16, 32, 64)",
            "act=relu,gelu",
            "batch=range(16, 64, 16)",
            "scale=range(0.5, 2.0, 0.5)",
            "order=shuffle(range(1, 4))",
            "trainer.max_epochs=5",
            "~callbacks.ces",
        ]
    )
    d = space.distributions
    assert d["lr"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert d["dropout"] == FloatDistribution(0.0, 0.5)
    # Hydra reads interval bounds as floats (integers come from range())
    assert d["layers"] == FloatDistribution(1.0, 4.0)
    assert d["width"] == CategoricalDistribution([16, 32, 64])
    assert d["act"] == CategoricalDistribution(["relu", "gelu"])
    # range() excludes its stop, as in Hydra's basic sweeper
    assert d["batch"] == IntDistribution(16, 48, step=16)
    assert d["scale"] == FloatDistribution(0.5, 1.5, step=0.5)
    assert isinstance(d["order"], CategoricalDistribution) and sorted(d["order"].choices) == [
        1,
        2,
        3,
    ]
    assert space.fixed == {"trainer.max_epochs": "5"}
    assert space.passthrough == ["~callbacks.ces"]


def test_later_overrides_win_and_grid_points_keep_the_written_order():
    space = parse_search_space(["lr=1,2", "wd=0.1,0.2", "lr=3,4,5"])
    assert space.grid() == {"lr": [3, 4, 5], "wd": [0.1, 0.2]}
    points = space.grid_points()
    assert points[:3] == [{"lr": 3, "wd": 0.1}, {"lr": 3, "wd": 0.2}, {"lr": 4, "wd": 0.1}]
    assert len(points) == 6


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("lr=interval(0.1, 0.01)", "needs low < high"),
        ("lr=tag(log, interval(0.0, 1.0))", "log interval needs low > 0"),
        ("n=range(5, 1)", "is empty"),
    ],
)
def test_bad_spaces_name_the_parameter(override, message):
    with pytest.raises(ValueError, match=message) as err:
        parse_search_space([override])
    assert f"`{override.split('=')[0]}`" in str(err.value)


def test_a_continuous_parameter_cannot_make_a_grid():
    space = parse_search_space(["lr=interval(0.1, 1.0)"])
    with pytest.raises(ValueError, match=r"`lr`.*choice"):
        space.grid()


def test_sampled_values_round_trip_through_the_override_parser():
    params = {"lr": 1e-05, "name": "a b", "q": "it's", "flag": True, "none": None, "n": 3}
    space = parse_search_space(["lr=interval(1e-6, 1e-3)"])
    parsed = OverridesParser.create().parse_overrides(trial_overrides(params, space))
    values = {o.get_key_element(): o.value() for o in parsed}
    assert values == params
    assert format_value("val/acc") == "val/acc"


def test_same_params_compares_floats_closely():
    assert same_params({"a": 0.1 + 0.2, "b": "x"}, {"a": 0.3, "b": "x"}, ["a", "b"])
    assert not same_params({"a": 0.3}, {"a": 0.31}, ["a"])
    assert not same_params({"a": 1}, {}, ["a"])
