"""CES without Lightning: candidates from a plain PyTorch loop, inference by ConformalPredictor.

``eecontrol.core.conformal`` (including ``ConformalPredictor``) must import and work with
every Lightning import blocked, as the design's "core is usable from a plain PyTorch loop"
says. The run is real: an MLP trained on sklearn's digits, four stored candidates.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import sys
for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
    sys.modules[name] = None  # any import of Lightning now raises ImportError
from pathlib import Path

import torch
from sklearn.datasets import load_digits

from eecontrol.core.conformal.candidates import save_candidate, write_run_files
from eecontrol.core.conformal.outputs import CandidateOutputs
from eecontrol.core.conformal.predictor import ConformalPredictor
from eecontrol.core.conformal.selection import holdout_losses

torch.manual_seed(0)
torch.set_num_threads(1)
x, y = load_digits(return_X_y=True)
x, y = torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)
perm = torch.randperm(len(y))
x, y = x[perm], y[perm]
(x_tr, y_tr), (x_ho, y_ho), (x_te, y_te) = (x[:1000], y[:1000]), (x[1000:1400], y[1000:1400]), (
    x[1400:], y[1400:])

def mlp():
    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))

model = mlp()
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
run = Path(sys.argv[1])
wrapper = CandidateOutputs(model, "classification")
outputs, paths = [], []
for epoch in range(4):
    for i in range(0, len(y_tr), 100):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x_tr[i : i + 100]), y_tr[i : i + 100]).backward()
        opt.step()
    name = f"candidate_epoch{epoch:04d}.pt"
    save_candidate(run / name, model.state_dict(), epoch, epoch)
    with torch.no_grad():
        outputs.append(wrapper(x_ho).double())
    paths.append(name)
record = {
    "task": "classification", "epochs": list(range(4)), "steps": list(range(4)),
    "paths": paths, "outputs": torch.stack(outputs), "targets": y_ho, "aps_seed": 0,
    "randomized": True, "conditional": True, "quantiles": [0.05, 0.95],
}
losses = holdout_losses("classification", record["outputs"], y_ho, (0.05, 0.95)).tolist()
write_run_files(run, record, losses)
sets = ConformalPredictor.from_run_dir(run, mlp()).predict_set(x_te, alpha=0.1)
coverage = float(sets[torch.arange(len(y_te)), y_te].double().mean())
print(len(y_te), coverage, float(sets.sum(1).double().mean()))
"""


def test_ces_from_a_plain_pytorch_loop_with_lightning_blocked(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "holdout.pt").is_file() and (tmp_path / "candidates.json").is_file()
    assert sorted(p.name for p in tmp_path.glob("candidate_epoch*.pt")) == [
        f"candidate_epoch{e:04d}.pt" for e in range(4)
    ]
    points, coverage, size = (float(v) for v in proc.stdout.split())
    assert points == 397
    assert coverage >= 0.8, coverage  # 1 - alpha = 0.9, marginally; 397 test points
    assert 1.0 <= size < 5.0, size  # informative sets, not every label
