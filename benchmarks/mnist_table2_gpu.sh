#!/usr/bin/env bash
# Table 2 and Figure 4 (binarized MNIST, the paper's full protocol) on one GPU, in pieces of at most
# 10 minutes each: every call trains one group of rows, batched in one process (flowbook.models.
# MultiDLGM), for at most $MINUTES minutes, checkpoints, and exits; the next call resumes it.
#
#   bash benchmarks/mnist_table2_gpu.sh GROUP train   # exit 0: training done; 3: call again
#   bash benchmarks/mnist_table2_gpu.sh GROUP eval    # test set: -ELBO, -ln p(x) (S = 5000), KL
#
# GROUP: planar (K = 0, 10, 20, 40, 80), nice (K = 10, 20, 40, 80) or radial (K = 10, 20, 40, 80,
# the extra row). Results: data/results/mnist_full_<row>.json (one per row, with provenance).
#
# Environment:
#   MINUTES=9          training time per call (the device allows 10-minute commands)
#   EXTRA="--compile"  extra options for `train`, e.g. torch.compile once measured to pay on the GPU
#   DRY_RUN=1          the same commands on the CPU ($DRY_THREADS threads, default 1) for $DRY_UPDATES
#                      updates (default 300) with a small evaluation, results labelled "dry-run"
#                      (mnist_full_dry-run_<row>.json): a test of the pipeline, not a reproduction.
set -euo pipefail
cd "$(dirname "$0")/.."
GROUP=${1:?usage: mnist_table2_gpu.sh planar|nice|radial train|eval}
PHASE=${2:-train}
case "$GROUP" in
  planar) ROWS=planar:0,planar:10,planar:20,planar:40,planar:80 ;;
  nice)   ROWS=nice:10,nice:20,nice:40,nice:80 ;;
  radial) ROWS=radial:10,radial:20,radial:40,radial:80 ;;
  *) echo "unknown group $GROUP: use planar, nice or radial" >&2; exit 2 ;;
esac
PY=${PYTHON:-.venv/bin/python}
[[ -x $PY ]] || PY=python
COMMON=(--mode full --rows "$ROWS" --out data/results --ckpt-dir data/checkpoints --no-progress)
if [[ ${DRY_RUN:-0} == 1 ]]; then
  COMMON+=(--device cpu --threads "${DRY_THREADS:-1}" --updates "${DRY_UPDATES:-300}" --label dry-run
           --eval-points "${DRY_EVAL_POINTS:-200}" --eval-samples "${DRY_EVAL_SAMPLES:-100}")
else
  COMMON+=(--device cuda)
fi
if [[ $PHASE == train ]]; then
  # shellcheck disable=SC2086
  exec "$PY" -m flowbook train "${COMMON[@]}" --max-minutes "${MINUTES:-9}" --ckpt-every 5000 --no-eval ${EXTRA:-}
elif [[ $PHASE == eval ]]; then
  exec "$PY" -m flowbook eval "${COMMON[@]}"
else
  echo "unknown phase $PHASE: use train or eval" >&2; exit 2
fi
