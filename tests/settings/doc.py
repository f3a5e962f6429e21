"""Writes ``docs/settings.md`` from the matrix's tables: ``python -m tests.settings.doc``.

``tests/settings/test_doc.py`` fails when the page and the tables disagree.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests.settings.harness import CALLBACKS, SETTINGS, expect

PAGE = Path(__file__).resolve().parents[2] / "docs" / "settings.md"

HEADER = """# Every callback in every training setting

Large models are trained with `Trainer(max_steps=N)`, streaming `IterableDataset`s,
validation several times per epoch, gradient accumulation, bf16 / fp16, LoRA, several
optimizers, DDP or FSDP and `torch.compile`. This page is the acceptance matrix that
`make test` runs (`tests/settings/`): each callback trained in each setting on real data
(scikit-learn's digits read as 16-token sequences) with a tiny random Llama classifier
built from a config (2 layers, hidden 32; DARTS+ runs a tiny first-order DARTS search),
and checked for what the callback promises, not only for "no crash".

This page is generated from the test tables (`python -m tests.settings.doc`); a test
fails when the two disagree.

Legend: **works** - the cell's checks pass; **refused** - the callback stops at set-up
with an error that names the setting (the test asserts the message); **n/a** - the setting
does not apply; **known defect (#23.N)** - the cell fails today, for the reason given under
"Why a cell is not plain 'works'" (related to item N of issue 23); it is a strict expected
failure in the suite, so the suite fails when it starts to pass and the page must change.
"""


def cell(callback: str, setting: str) -> str:
    e = expect(callback, setting)
    if e.status == "works":
        return "works"
    if e.status == "refused":
        return "refused"
    if e.status == "na":
        return "n/a"
    return f"known defect (#23.{e.item})"


def render() -> str:
    names = list(SETTINGS)
    lines = [HEADER, "## The matrix", ""]
    lines.append("| setting | " + " | ".join(CALLBACKS[c].title for c in CALLBACKS) + " |")
    lines.append("|---|" + "---|" * len(CALLBACKS))
    for s in names:
        row = [cell(c, s) for c in CALLBACKS]
        lines.append(f"| {SETTINGS[s].title} (`{s}`) | " + " | ".join(row) + " |")
    lines += ["", "## What each cell checks", ""]
    for spec in CALLBACKS.values():
        lines.append(f"- **{spec.title}**: {spec.checks}.")
    notes = [
        (c, s, expect(c, s)) for c in CALLBACKS for s in names if expect(c, s).status != "works"
    ]
    lines += ["", "## Why a cell is not plain 'works'", ""]
    for c, s, e in notes:
        label = {
            "na": "n/a",
            "refused": "refused",
            "xfail": f"known defect, issue 23 item {e.item}",
        }
        lines.append(f"- {CALLBACKS[c].title} x {SETTINGS[s].title}: {label[e.status]}: {e.reason}")
    lines.append(
        "- GradES x DDP: runs with `strategy='ddp_find_unused_parameters_true'`; under plain "
        "`strategy='ddp'` it is refused at set-up with an error naming `find_unused_parameters` "
        "(tested: `test_grades_refuses_ddp_without_find_unused_parameters`)."
    )
    lines.append(
        "- GradES x FSDP: runs with `FSDPStrategy(use_orig_params=True)` (Lightning's "
        "default; FULL_SHARD, SHARD_GRAD_OP or NO_SHARD): each rank sums its pieces of every "
        "matrix and the ranks' partial sums are added, so every rank reads the full matrix's "
        "statistic; `use_orig_params=False` and HYBRID_SHARD are refused at set-up naming the "
        "option (tested: `tests/callbacks/test_grades_fsdp.py`; the refusals: `test_strategy_checks`)."
    )
    lines += [
        "",
        "## Settings",
        "",
        "Every setting trains on 384 digits (12 batches of 32 per epoch) and validates on 128.",
        "",
    ]
    for s, st in SETTINGS.items():
        extra = []
        if st.stream:
            extra.append(
                "endless IterableDataset (no length) through `ResumableDataLoader`, with "
                "`EpochSeed(0, per_batch=True)` (docs/resume.md: what a stream needs to resume)"
            )
        if st.variant != "plain":
            extra.append(f"module variant `{st.variant}`")
        if st.run != "fit":
            extra.append(f"run `{st.run}`")
        if st.fp16:
            extra.append("fp16 autocast with a GradScaler (CPU: MixedPrecision plugin)")
        if st.compile:
            extra.append("torch.compile (aot_eager on CPU, inductor on CUDA)")
        if st.distributed:
            extra.append(f"{st.distributed}, 2 processes (CPU: gloo)")
        kwargs = ", ".join(f"{k}={v!r}" for k, v in st.trainer.items())
        lines.append(f"- `{s}`: Trainer({kwargs})" + (f"; {'; '.join(extra)}" if extra else ""))
    lines += [
        "",
        "## Running it",
        "",
        "```bash",
        "make test                                   # the CPU matrix is part of the suite",
        "pytest tests/settings -q                    # the matrix alone",
        "EECONTROL_TEST_DEVICE=cuda pytest tests/settings -q   # on a GPU",
        "bash benchmarks/device_check.sh             # GPU cells + overhead benchmark, one call",
        "```",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    PAGE.write_text(render())
    print(f"wrote {PAGE}", file=sys.stderr)


if __name__ == "__main__":
    main()
