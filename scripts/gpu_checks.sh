#!/usr/bin/env bash
# The prepared GPU run for a session that is lent a device. Not run yet. The timeouts of the
# measurements (280 + 45 + 45 + 90 + 120 s) keep them inside one 10-minute device call; the wide
# config's training run comes last, so a call that reaches its limit loses only that.
#
# Here, once:   mkdir -p .fmnist && cp /usr/share/datasets/fashion-mnist/*.gz .fmnist/
#               echo /.fmnist/ >> .git/info/exclude
# Then one device call:  run(command="bash scripts/gpu_checks.sh", carry=[".fmnist"],
#                            timeout_s=600)
# and, if device time is left, a second: run(command="bash scripts/gpu_checks.sh sweep", ...)
# (issue 16: 64 members of the small model in one program against one member alone; target
# <= 2x the time of one).
# The device image has jax (CUDA), flax, equinox, optax, orbax, torch and scikit-learn; fmlp
# runs from the working tree. Results land in $OUT (the device tool brings them back); copy
# them into benchmarks/ and quote them in benchmarks/RESULTS.md with the card's name.
set -uo pipefail  # no -e: a check that fails or times out must not skip the ones after it
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_checks}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import jax; print(jax.__version__, jax.devices())" | tee -a "$OUT/gpu.txt"

if [ "${1:-}" = sweep ]; then
  timeout 500 python3 scripts/bench_sweep.py --data-path .fmnist --cases small --rates 16 \
    --seeds 4 --epochs 3 --versus one --out "$OUT/bench_sweep_gpu.json" 2>&1 \
    | tee "$OUT/bench_sweep_gpu.log" || echo "exit status $? (124: timed out)"
  exit 0
fi

# Issue 4: peers side by side (includes the 8192-wide bf16 case on GPU), and time to 89.5%.
timeout 280 python3 scripts/bench.py --data-path .fmnist --sweep '' --epochs 3 --rounds 3 \
  --only fmlp,fmlp-jax,jax-scan,jax-step,nnx,equinox,torch \
  --out "$OUT/bench_gpu.json" 2>&1 | tee "$OUT/bench_gpu.log" \
  || echo "exit status $? (124: timed out)"
# The small model with its loop unrolled 8 steps per iteration (PERF-NOTES: 19.4 -> 15.5 ms
# per epoch for raw JAX on an H100): fmlp and jax-scan, both unrolled; compare with the
# unroll-1 rows above.
timeout 45 python3 scripts/bench.py --data-path .fmnist --sizes 784-256-256-10:128 --sweep '' \
  --only fmlp,jax-scan --unroll 8 --epochs 3 --rounds 3 --out "$OUT/bench_gpu_unroll8.json" 2>&1 | tail -n 7 \
  || echo "exit status $? (124: timed out)"
# Issue 11: which way of forming the batches train.batches=auto should take on a GPU (it
# takes the permuted copy there, unmeasured): both, beside the hand-written scan.
timeout 45 python3 scripts/bench.py --data-path .fmnist --sizes 784-16-16-10:16,784-256-256-10:128 \
  --sweep '' --only fmlp-gathered,fmlp-permuted,jax-scan --epochs 3 --rounds 3 \
  --out "$OUT/bench_gpu_batches.json" 2>&1 | tail -n 12 || echo "exit status $? (124: timed out)"
timeout 90 python3 scripts/bench.py --data-path .fmnist --time-to-accuracy 0.895 --rounds 1 \
  --only fmlp,jax-step,torch --out "$OUT/bench_gpu_tta.json" 2>&1 | tail -n 12 \
  || echo "exit status $? (124: timed out)"

# Issue 5: float32 vs bfloat16 throughput and peak memory, small and wide model.
timeout 120 python3 scripts/bench_precision.py --data-path .fmnist \
  --out "$OUT/precision_gpu.json" 2>&1 | tee "$OUT/precision_gpu.log" \
  || echo "exit status $? (124: timed out)"

# configs/fashion_mnist_wide.yaml trains for real (bf16, 20 epochs); its summary and metrics
# come back, its checkpoints (1.0 GiB each on the CPU) do not.
timeout 90 python3 -m fmlp train configs/fashion_mnist_wide.yaml data.path=.fmnist \
  run.progress=never --out /tmp/wide 2>&1 | tail -n 3 || echo "exit status $? (124: timed out)"
cp /tmp/wide/summary.json "$OUT/wide_summary.json"
cp /tmp/wide/metrics.jsonl "$OUT/wide_metrics.jsonl"
