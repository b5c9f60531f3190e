#!/usr/bin/env bash
# The GPU checks, as one script for a lent device machine (its python3 holds torch with CUDA):
#   bash benchmarks/device_check.sh OUTDIR
# The `gpu` tests, then bench_lm.py's batch of 40 replicates x 32 starts at n = 1e5 on "cuda" (NumPy timed on
# 1 x 4 of the same problems), then bench_em.py's backends table with "cuda" (one size per process, so that each
# prints). About 4 minutes on an H200, by the stages' times in benchmarks/README.md. Each stage has its own time
# limit, so that a slow one still leaves the others' output; everything is logged to OUTDIR/device_check.log.
set -uo pipefail
out=${1:?usage: device_check.sh OUTDIR}
log=$out/device_check.log
export PYTHONPATH=. PYTHONUNBUFFERED=1
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import numpy, scipy, torch; print('numpy', numpy.__version__, 'scipy', scipy.__version__,
'torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  nproc
} 2>&1 | tee "$log"
timeout 120 python3 -m pytest -p no:cacheprovider -q -m gpu tests/test_lm.py tests/test_em_backend.py 2>&1 | tee -a "$log"
timeout 260 python3 benchmarks/bench_lm.py --gpu-batch --replicates 40 --starts 32 --n 100000 \
  --cpu-replicates 1 --cpu-starts 4 2>&1 | tee -a "$log"
for n in 10000 100000; do
  timeout 120 python3 benchmarks/bench_em.py --backends --sizes $n --reps 1 --starts 2 2>&1 | tee -a "$log"
done
date -u | tee -a "$log"
