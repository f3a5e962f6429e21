#!/usr/bin/env bash
# The acceptance matrix's GPU cells and the overhead benchmark, in one call on a GPU machine.
#
#   bash benchmarks/device_check.sh            # results under $OUT (or benchmarks/results/device)
#
# Runs: the in-process matrix on CUDA (bf16-mixed / bf16-true / fp16-mixed with a real
# GradScaler, compile with inductor, and every other single-GPU cell), the FSDP and DDP
# cells on 2 GPUs when there are 2 (nccl), and benchmarks/overhead.py on the GPU.
# Without a GPU it says so and exits 0 (nothing to check here).
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results/device}"
mkdir -p "$OUT"
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python

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
timeout 420 "$PY" -m pytest tests/settings/test_matrix.py -q -p no:cacheprovider \
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

# 3. the whole-step overhead of every callback on the GPU
timeout 300 "$PY" benchmarks/overhead.py --device cuda --repeats 5 --out "$OUT/overhead_cuda.json" \
  2>&1 | tail -20 | tee "$OUT/overhead_cuda.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "device_check: done, status $status, results in $OUT"
exit $status
