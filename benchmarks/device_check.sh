#!/usr/bin/env bash
# The acceptance matrix's GPU cells and the overhead benchmark, in one call on a GPU machine.
#
#   bash benchmarks/device_check.sh            # results under $OUT (or benchmarks/results/device)
#   bash benchmarks/device_check.sh --dry-run  # every step on CPU, minimal: checks the script
#
# Runs: the in-process matrix's GPU-relevant cells on CUDA (bf16-mixed / bf16-true /
# fp16-mixed with a real GradScaler, accumulation, compile with inductor; MATRIX_K=""
# runs every single-GPU cell), the FSDP and DDP cells on 2 GPUs when there are 2 (nccl),
# and benchmarks/overhead.py on the GPU. The steps' time limits add up to under 600 s on
# one GPU (a lent machine's limit per command); each step writes its own files, so a
# step cut short leaves the others' results.
# Without a GPU it says so and exits 0 (nothing to check here), unless --dry-run.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results/device}"
mkdir -p "$OUT"
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
MATRIX_K="${MATRIX_K-bf16 or fp16 or accumulation or compile}"

if [ "$DRY" = 1 ]; then
  # CPU, minimal: one matrix cell, the distributed cells collected, one overhead pair.
  export EECONTROL_TEST_DEVICE=cpu
  status=0
  timeout 300 "$PY" -m pytest tests/settings/test_matrix.py -q -p no:cacheprovider \
    -k "GradES-bf16_mixed" --junitxml="$OUT/matrix_dry.xml" -o junit_family=xunit2 2>&1 \
    | tail -5 | tee "$OUT/matrix_dry.txt"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  timeout 120 "$PY" -m pytest tests/settings/test_distributed.py -q -p no:cacheprovider \
    --collect-only 2>&1 | tail -3 | tee "$OUT/distributed_dry.txt"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  timeout 300 "$PY" benchmarks/overhead.py --dry-run --only GradES --out "$OUT/overhead_dry.json" \
    2>&1 | tail -3 | tee "$OUT/overhead_dry.txt"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  echo "device_check --dry-run: done, status $status, results in $OUT"
  exit $status
fi

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "device_check: no CUDA device visible to $PY; nothing to run (the CPU matrix runs in make test)."
  echo '{"skipped": "no CUDA device"}' > "$OUT/device_check.json"
  exit 0
fi
NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())")
"$PY" -c "import torch; print('device:', torch.cuda.get_device_name(0), 'x', torch.cuda.device_count(), 'torch', torch.__version__)" | tee "$OUT/device.txt"
export EECONTROL_TEST_DEVICE=cuda
status=0

# 1. the single-device matrix on CUDA (compile cells use inductor)
timeout 330 "$PY" -m pytest tests/settings/test_matrix.py -q -p no:cacheprovider \
  ${MATRIX_K:+-k "$MATRIX_K"} \
  --junitxml="$OUT/matrix_cuda.xml" -o junit_family=xunit2 2>&1 | tail -40 | tee "$OUT/matrix_cuda.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

# 2. DDP and FSDP on 2 GPUs (nccl), when there are 2
if [ "$NGPU" -ge 2 ]; then
  timeout 300 "$PY" -m pytest tests/settings/test_distributed.py -q -p no:cacheprovider \
    --junitxml="$OUT/distributed_cuda.xml" 2>&1 | tail -30 | tee "$OUT/distributed_cuda.txt"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
else
  echo "device_check: $NGPU GPU: DDP/FSDP cells need 2 (skipped)" | tee "$OUT/distributed_cuda.txt"
fi

# 3. the whole-step overhead of the per-step callbacks on the GPU (wall time is the clock
#    to read there: CPU time includes the synchronisations' spinning)
timeout 200 "$PY" benchmarks/overhead.py --device cuda --epochs 2 --repeats 3 \
  --only "A/A (bare vs bare)" GradES DropoutSchedule ConformalEarlyStopping \
  --out "$OUT/overhead_cuda.json" 2>&1 | tail -20 | tee "$OUT/overhead_cuda.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "device_check: done, status $status, results in $OUT"
exit $status
