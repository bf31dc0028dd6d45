#!/usr/bin/env bash
# Issue #12's GPU checks in one call on a CUDA machine: the CUDA tests, then the GPU runtime sweep
# (N to 262144, K to 16384, three codebook kinds) side by side with scq.VQ and
# vector-quantize-pytorch, and the pgd ablation. Results land in $OUT (the device tool's folder;
# benchmarks/results/cuda when unset): cuda_tests.log, runtime.csv (rewritten after each case, so a
# run stopped by its time limit keeps what it measured), runtime.md, runtime_sweeps.png,
# ablation.csv, bench.log.
#
# The machine needs torch with CUDA, triton, numba, numpy, tqdm, matplotlib, pytest and setuptools
# (a lent H200 has them) and, for the vector-quantize-pytorch column, its wheels: carried in .whl/
# (see the README, "On a GPU"). cvxpy is not needed there: without it the deviation is measured
# against pgd in float64 on the CPU, kept only where its certificate holds.
#
# Budget (seconds, each part stopped at its limit): TEST_S for the tests, BENCH_S for the sweep.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results/cuda}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
    echo "device_check: no torch with a CUDA device here"; exit 2; }
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "device_check: the carried wheels did not install"; exit 1; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# scq itself, editable (scq.bench maps to benchmarks/), with nothing fetched: the machine is offline.
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . \
    || { echo "device_check: install failed"; exit 1; }
python3 -c "import torch; print('device_check:', torch.cuda.get_device_name(), 'torch', torch.__version__)" \
    | tee "$out/bench.log"

# The CUDA tests (kernels against the torch path in float32 and float64, host syncs, gradcheck).
timeout "${TEST_S:-150}" python3 -m pytest -q -p no:cacheprovider -k "cuda" tests 2>&1 | tee "$out/cuda_tests.log"
tests=${PIPESTATUS[0]}

# The sweep: `scq bench runtime --device cuda` (runtime + ablation), its tables and plot.
timeout "${BENCH_S:-400}" python3 -m scq.cli bench runtime --device cuda --out "$out" 2>&1 | tee -a "$out/bench.log"
bench=${PIPESTATUS[0]}
echo "device_check: tests exit $tests, bench exit $bench (124: stopped at its time limit)" | tee -a "$out/bench.log"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
