"""``benchmarks/curves_pfn.py --write-shipped``'s writer: weights, spread and record."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import curves_pfn

from eecontrol.core.curves import pfn


def test_the_written_weights_carry_the_chosen_spread_and_record(tmp_path: Path) -> None:
    choice = {"variant": "x", "point": "median", "spread": 1.25}
    dest = tmp_path / "w" / "pfn.pt"
    curves_pfn.write_weights(pfn.WEIGHTS_FILE, dest, {"choice": choice, "chosen_on": ["a"]})
    assert dest.is_file() and pfn.load_model(pfn.WEIGHTS_FILE).spread != 1.25
    assert pfn.load_model(dest).spread == 1.25
    src, out = (torch.load(p, weights_only=True)["state_dict"] for p in (pfn.WEIGHTS_FILE, dest))
    assert all(torch.equal(src[k], out[k]) for k in src)
    record = json.loads(dest.with_suffix(".json").read_text())
    shipped = json.loads(pfn.WEIGHTS_FILE.with_suffix(".json").read_text())
    assert record["config"] == shipped["config"]  # the training record is kept
    assert record["shipped"] == {"choice": choice, "chosen_on": ["a"]}
