#!/usr/bin/env bash
# Full-mode experiments (the paper's protocol), meant for a GPU. Each writes JSON results with
# provenance into data/results/ (flowbook.results.save_result); the book shows full-mode numbers
# only from there. Run by the manual trigger of .github/workflows/gpu.yml, or by hand:
#
#   bash .ci/full_experiments.sh                 # everything
#   bash .ci/full_experiments.sh mnist cifar10   # some of: energy2d mnist cifar10 <chapter scripts>
#
# Experiment owners: add a function `exp_<name>` below and its name to ALL.
set -euo pipefail
cd "$(dirname "$0")/.."
export FLOWBOOK_MODE=full
PY=${PYTHON:-.venv/bin/python}
MAX_MINUTES=${MAX_MINUTES:-60}   # length of one resumable training piece

# until_done CMD...: the training CLIs checkpoint and exit 3 after --max-minutes; call again until
# they finish (exit 0). Any other exit status is an error.
until_done() {
  local status
  while true; do
    status=0
    "$@" || status=$?
    case $status in
      0) return 0 ;;
      3) echo "... resuming: $*" ;;
      *) echo "failed (exit $status): $*" >&2; return "$status" ;;
    esac
  done
}

# §6.1, Figure 3: planar, radial and NICE fits of the four 2-D energies of Table 1. These are the
# commands of the runs chapter 4 shows (each result's "command" field holds the same line): the main runs,
# longer runs for the fits that were still moving, and five restarts per method at K = 2. The earlier
# energy2d_full_planar (4500 updates) and energy2d_full_radial (3000) runs are superseded and not repeated.
# The fits are Python-overhead bound, hence one thread each on the CPU, ENERGY2D_JOBS of them at once.
exp_energy2d() {
  local dev=${ENERGY2D_DEVICE:-cpu} seed
  local common=(--mode full --threads 1 --device "$dev" --samples 256)
  {
    echo "--methods planar radial --Ks 2 8 32 --updates 12000 --checkpoints 6000 9000 --name energy2d_full_planar_radial"
    echo "--methods planar --Ks 32 --targets U3 U4 --updates 60000 --samples 512 --store-K 32 --name energy2d_full_planar_long"
    echo "--methods nice-orth nice-perm --Ks 2 8 32 --updates 12000 --nice-hidden 64 --checkpoints 6000 9000 --name energy2d_full_nice"
    echo "--methods nice-orth nice-perm --Ks 32 --updates 24000 --nice-hidden 64 --checkpoints 16000 20000 --store-K 32 --name energy2d_full_nice_K32_long"
    echo "--methods nice-orth nice-perm --Ks 2 8 32 --updates 12000 --nice-hidden 1 --checkpoints 6000 9000 --name energy2d_full_nice_h1"
    for seed in 0 1 2 3 4; do
      echo "--methods planar radial nice-orth nice-perm --Ks 2 --updates 6000 --nice-hidden 64 --seed $seed --checkpoints 3000 4500 --store-K --name energy2d_restarts_K2_seed$seed"
      echo "--methods nice-orth nice-perm --Ks 2 --updates 6000 --nice-hidden 1 --seed $seed --checkpoints 3000 4500 --store-K --name energy2d_restarts_K2_h1_seed$seed"
    done
  } | { export -f until_done; export PY MAX_MINUTES
        # each fit in resumable pieces of MAX_MINUTES, like the other experiments
        xargs -P "${ENERGY2D_JOBS:-$(nproc)}" -L 1 bash -c \
          'until_done "$PY" -m flowbook.experiments2d "$@" --max-minutes "$MAX_MINUTES"' _ "${common[@]}"; }
}

# §6.2, Table 2 and Figure 4: DLGM on binarized MNIST, diagonal Gaussian and planar / NICE (and radial,
# an extra row) flows of length K. Each group's rows train together in one process (MultiDLGM), in
# resumable pieces of MAX_MINUTES; then the test set is evaluated (S = 5000). The exact commands are in
# benchmarks/mnist_table2_gpu.sh (DRY_RUN=1 runs them on the CPU for a few hundred updates).
exp_mnist() {
  local group
  for group in planar nice radial; do
    PYTHON=$PY MINUTES=$MAX_MINUTES until_done bash benchmarks/mnist_table2_gpu.sh "$group" train
    PYTHON=$PY bash benchmarks/mnist_table2_gpu.sh "$group" eval
  done
}

# §6.2, Table 3: DLGM on CIFAR-10 (patches) with K = 0, 2, 5, 10 planar flows.
exp_cifar10() {
  until_done "$PY" -m flowbook.cifar train --mode full --max-minutes "$MAX_MINUTES"
}

ALL=(energy2d mnist cifar10)
selected=("$@")
[[ ${#selected[@]} -gt 0 ]] || selected=("${ALL[@]}")
mkdir -p data/results
for name in "${selected[@]}"; do
  if ! declare -F "exp_$name" >/dev/null; then
    echo "unknown experiment '$name'; known: ${ALL[*]}" >&2
    exit 2
  fi
  start=$SECONDS
  echo "======== full-mode experiment: $name ========"
  "exp_$name"
  echo "-------- $name: $((SECONDS - start)) s --------"
done
ls -l data/results/
