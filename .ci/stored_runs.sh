#!/usr/bin/env bash
# The stored runs: Table 2 (binarized MNIST) and Table 3 (CIFAR-10 patches) trained on the project's
# 2-core CPU with the stored protocol (flowbook.train.STORED, flowbook.cifar.STORED), one thread per
# process, two processes at once (two one-thread runs beat one two-thread run on this machine):
#
#   DEADLINE=$(date -d '+150 min' +%s) nohup bash .ci/stored_runs.sh A > data/checkpoints/A.log 2>&1 &
#   DEADLINE=...                       nohup bash .ci/stored_runs.sh B > data/checkpoints/B.log 2>&1 &
#
# Every row is resumable: a run stops (after checkpointing) when DEADLINE (seconds since the epoch)
# comes, and the same command resumes it. Rows whose result is already in data/results/ are skipped,
# so the script can be restarted at any time. Each finished row writes data/results/<name>.json and
# data/weights/<name>.pt (float16); commit both.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DEADLINE=${DEADLINE:-$(( $(date +%s) + 8 * 3600 ))}
# evaluation of this pass: S importance samples on the whole test set (the paper: S = 5000)
MNIST_S=${MNIST_S:-1000}

# LONG=1: the stored protocol with twice the updates (120 000), results labelled updates120k
mnist() {  # mnist FLOW K
  local row=$([[ $2 == 0 ]] && echo diagonal || echo "$1_K$2")
  local name=mnist_stored_$row longer=()
  if [[ -n ${LONG:-} ]]; then name=mnist_stored_updates120k_$row; longer=(--updates 120000 --label updates120k); fi
  run "$name" "$PY" -m flowbook train --mode stored --flow "$1" --K "$2" --threads 1 --no-progress \
    --eval-samples "$MNIST_S" ${longer[@]+"${longer[@]}"}
}
cifar() {  # cifar K (CIFAR-10's rows are planar)
  run "cifar10_stored_$([[ $1 == 0 ]] && echo diagonal || echo "planar_K$1")" "$PY" -m flowbook.cifar train --mode stored --K "$1" --threads 1
}

# maxout UNITS K: a short paired run (20 000 updates of the stored protocol at a rate of 3e-4, the same
# seed, S = 1000 on the first 2 000 test digits) of planar K with the maxout reading UNITS (at the stored
# rate of 1e-3 the wider K = 80 row diverged during the annealing); the wider reading's weights (about
# 11 MB at K = 80) are over the size limit of data/weights, so all of these stay in data/checkpoints
# maxout UNITS K 1e-3: the same at the stored rate (labelled short20k-lr1e-3-UNITS)
maxout() {
  local row=$([[ $2 == 0 ]] && echo diagonal || echo "planar_K$2") label=short20k-$1
  [[ -n ${3:-} ]] && label=short20k-lr$3-$1
  run "mnist_stored_${label}_$row" "$PY" -m flowbook train --mode stored --flow planar --K "$2" \
    --threads 1 --no-progress --updates 20000 --lr "${3:-3e-4}" --label "$label" --eval-points 2000 \
    --eval-samples 1000 \
    --maxout-units "$([[ $1 == wide ]] && echo outputs || echo pre_activations)" \
    --weights-dir data/checkpoints/weights
}

# cont FLOW K LABEL_FROM UPDATES LABEL [OPTIONS...]: a stage that continues the stored row (FLOW, K) of
# LABEL_FROM from its committed weights for UPDATES more updates (β = 1, a fresh Adam with a 1 000-update
# warm-up, then a cosine decay to 1e-5, the best-validation parameters kept), stored as LABEL.
cont() {
  local flow=$1 K=$2 from=$3 updates=$4 label=$5; shift 5
  local row=$([[ $K == 0 ]] && echo diagonal || echo "${flow}_K$K")
  run "mnist_stored_${label}_$row" "$PY" -m flowbook train --mode stored --flow "$flow" --K "$K" \
    --continue-from "$from" --updates "$updates" --label "$label" --warmup 1000 --threads 1 --no-progress "$@"
}

# fits NAME STEM MINUTES: whether a row may start: it is stored (run skips it), its checkpoint
# data/checkpoints/STEM_*.pt exists (a resume), or its estimated cost MINUTES fits before DEADLINE
fits() {
  [[ -f data/results/$1.json ]] && return 0
  compgen -G "data/checkpoints/$2_*.pt" >/dev/null && return 0
  local left=$(( (DEADLINE - $(date +%s)) / 60 - 1 ))
  (( $3 <= left )) && return 0
  echo "[$(date +%T)] $1: needs about $3 min, $left left before DEADLINE: not started"
  return 1
}

# stage FLOW K FROM UPDATES LABEL: Table 2's next stage of a row (cont with the settings the paired study
# adopted: STAGE_OPTIONS), with S = MNIST_S on all test digits. A stage is started only when its measured
# cost (the row's last stage's training rate and evaluation time, plus 10 %) fits before DEADLINE, or when
# its checkpoint exists (a resume): a session never spends its time on a stage it cannot finish.
STAGE_OPTIONS=(--lr 3e-4 --fused)  # the paired study: peak 3e-4 beat 1e-4, averaging did not pay, fused = default
stage() {
  local flow=$1 K=$2 from=$3 updates=$4 label=$5
  local row=$([[ $K == 0 ]] && echo diagonal || echo "${flow}_K$K")
  local stem=$([[ $K == 0 ]] && echo diagonal || echo "$flow$K")
  local name=mnist_stored_${label}_$row
  if [[ ! -f data/results/mnist_stored_${from}_$row.json ]]; then
    echo "[$(date +%T)] $name: the stage it continues, $from, is not stored: not started"; return 0; fi
  local need=$("$PY" -c 'import sys, json
r = json.load(open(f"data/results/mnist_stored_{sys.argv[1]}_{sys.argv[2]}.json"))
c = r["config"]
print(round(1.1 * (c["train_seconds"] * int(sys.argv[3]) / c["train"]["updates"] + r["metrics"]["eval_seconds"]) / 60))' \
    "$from" "$row" "$updates")
  fits "$name" "mnist_stored_${label}_$stem" "$need" || return 0
  cont "$flow" "$K" "$from" "$updates" "$label" "${STAGE_OPTIONS[@]}" --eval-samples "$MNIST_S"
}

# later FLOW K [OPTIONS...]: a row of chapter 8's table (the flows that came after) trained from scratch
# with Table 2's 120 000-update protocol (the updates120k rows: the stored protocol, β annealed over the
# first 10 000 updates, a cosine decay from 1e-3 to 1e-5), the fused Adam step of the stages, and S = MNIST_S
# on all test digits, per-digit values kept; OPTIONS are the flow's own (--flow-option KEY=VALUE)
later() {
  local flow=$1 K=$2; shift 2
  # its cost: the quiet one-thread benchmark's time per update (benchmarks/later_flows.py) times 1.3, as
  # the stored stages measured beside a second run, and the S = 1000 evaluation of the planar row of the
  # same head cost scaled by the benchmark's ratio, plus 10 %
  local need=$("$PY" -c 'import sys, json
flow, K, S = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rows = [r for r in json.load(open("data/results/bench_later_flows.json"))["metrics"]["rows"]
        if r["flow"] == flow and r["K"] == K]
if not rows: sys.exit(print(0))
rows.sort(key=lambda r: -r["ms"])  # a flow at one depth may stand at two costs: the slower time
planar_K = rows[0]["planar_K"]
planar = json.load(open(f"data/results/mnist_stored_updates240k_planar_K{planar_K}.json"))
evaluate = planar["metrics"]["eval_seconds"] * rows[0]["ratio_to_planar"] * S / 1000
print(round(1.1 * (1.3 * rows[0]["ms"] * 120 + evaluate) / 60))' "$flow" "$K" "$MNIST_S")
  fits "mnist_stored_updates120k_${flow}_K$K" "mnist_stored_updates120k_$flow$K" "$need" || return 0
  run "mnist_stored_updates120k_${flow}_K$K" "$PY" -m flowbook train --mode stored --flow "$flow" --K "$K" \
    --updates 120000 --label updates120k --fused --threads 1 --no-progress --eval-samples "$MNIST_S" "$@"
}

# superseded ROW: per-digit values (S = MNIST_S, all test digits) of a row's 120 000-update stage, whose
# weights have left the tree: they are taken back from git for the evaluation only (checked against the
# SHA-256 that the row's next stage recorded as its start) and removed again; the evaluation and its
# points file are added to the stored result. Chapter 8 pairs its rows, trained for 120 000 updates from
# scratch, with these on the same digits.
superseded() {
  local name=mnist_stored_updates120k_$1 next=mnist_stored_updates240k_$1
  if compgen -G "data/results/points/${name}_S${MNIST_S}_n10000_seed1234.json" >/dev/null; then
    echo "[$(date +%T)] $name: S = $MNIST_S per digit stored, skipped"; return 0; fi
  local weights=data/weights/$name.pt commit
  commit=$(git log -n 1 --format=%H --diff-filter=D -- "$weights") || return
  git show "$commit^:$weights" > "$weights" || return
  local want=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["config"]["train"]["init_sha256"])' \
    "data/results/$next.json")
  if [[ $(sha256sum "$weights" | cut -d' ' -f1) != "$want" ]]; then
    echo "[$(date +%T)] $name: the weights from git are not those $next started from" >&2; rm -f "$weights"; return 1; fi
  local status=0
  "$PY" -m flowbook evaluate-weights "$name" --samples "$MNIST_S" --threads 1 || status=$?
  rm -f "$weights"
  return "$status"
}

pairs_a() { superseded planar_K20; superseded planar_K80; }
pairs_b() { superseded planar_K10; superseded planar_K40; }

# NICE K = 80's 480k: its 240 000 more updates take about 3 one-thread hours, longer than a session, so it
# gets there in two stages of 120 000 (each its own warm-up and cosine decay, each committed)
nice80_480() { stage nice 80 updates240k 120000 updates360k || exit; stage nice 80 updates360k 120000 updates480k; }

# study LABEL RATE [OPTIONS...]: the short paired study of a continuation's settings (chapter 5): planar
# K = 80 continued from Table 2's 120 000-update weights for 20 000 updates, peak rate RATE, the same seed;
# S = 1000 on the first 2 000 test digits, per-digit values kept. The weights are not committed.
study() {
  local label=$1 rate=$2; shift 2
  cont planar 80 updates120k 20000 "$label" --lr "$rate" "$@" --eval-points 2000 --eval-samples 1000 \
    --weights-dir data/checkpoints/weights
}

# baseline NAME: the same evaluation (S = 1000, first 2 000 test digits) of a stored row, per-digit values
# kept, so that the study's rows compare with the weights they started from on the same digits.
baseline() {
  if compgen -G "data/results/points/$1_S1000_n2000_seed1234.json" >/dev/null; then
    echo "[$(date +%T)] $1: S = 1000 on 2 000 digits stored, skipped"; return 0; fi
  "$PY" -m flowbook evaluate-weights "$1" --samples 1000 --points 2000 --threads 1
}

# evaluate NAME: the paper's evaluation (S = 5000, all 10 000 test digits) of a stored MNIST row from its
# committed weights, added to data/results/NAME.json; skipped once there, resumable until DEADLINE.
evaluate() {
  if [[ ! -f data/results/$1.json ]]; then echo "[$(date +%T)] $1: not stored yet, skipped"; return 0; fi
  # flowbook.results.evaluation raises KeyError while the row has no S = 5000 on its whole test set
  if "$PY" -c 'import sys; from flowbook import results
results.evaluation(results.load_result(f"data/results/{sys.argv[1]}.json"), 5000)' "$1" 2>/dev/null
  then echo "[$(date +%T)] $1: S = 5000 stored, skipped"; return 0; fi
  local left=$(( (DEADLINE - $(date +%s)) / 60 - 1 ))
  if (( left < 2 )); then echo "[$(date +%T)] $1: no time left before DEADLINE"; return 3; fi
  echo "[$(date +%T)] $1: S = 5000 evaluation ($left min left)"
  local status=0
  "$PY" -m flowbook evaluate-weights "$1" --samples 5000 --threads 1 --max-minutes "$left" || status=$?
  echo "[$(date +%T)] $1: exit $status"
  return "$status"
}

# run NAME CMD...: skip when data/results/NAME.json exists; else train (in pieces until DEADLINE).
run() {
  local name=$1; shift
  if [[ -f data/results/$name.json ]]; then echo "[$(date +%T)] $name: stored, skipped"; return 0; fi
  local left=$(( (DEADLINE - $(date +%s)) / 60 - 1 ))
  if (( left < 2 )); then echo "[$(date +%T)] $name: no time left before DEADLINE"; return 3; fi
  echo "[$(date +%T)] $name: start ($left min left)"
  local status=0
  "$@" --max-minutes "$left" || status=$?
  echo "[$(date +%T)] $name: exit $status"
  return "$status"
}

case ${1:-} in
  # the rows that answer the main questions first: K = 0 against K = 80, and CIFAR-10's four rows
  A) mnist planar 0; mnist planar 80; cifar 0; cifar 2; mnist planar 10; mnist planar 20; mnist planar 40 ;;
  B) cifar 10; cifar 5; mnist nice 80; mnist nice 10; mnist nice 20; mnist nice 40 ;;
  radial) for K in 10 20 40 80; do mnist radial "$K"; done ;;
  # the same, balanced over two processes (about 45 and 55 one-thread minutes)
  radialA) mnist radial 10; mnist radial 40 ;;
  radialB) mnist radial 80; mnist radial 20 ;;
  # Table 3 alone, the two processes balanced (K = 10 costs about as much as K = 2 and K = 5 together)
  cifarA) cifar 10; cifar 0 ;;
  cifarB) cifar 5; cifar 2 ;;
  # S = 5000 for Table 2 (the rows above were evaluated with S = 1000), balanced over two processes
  # (about 120 and 170 one-thread minutes); the headline rows K = 0 and planar K = 80 first, then
  # the cheapest, so that a session that ends early has stored as many rows as it could
  evalA) for r in diagonal planar_K80 nice_K10 nice_K40; do evaluate "mnist_stored_$r" || exit; done ;;
  evalB) for r in planar_K10 planar_K20 planar_K40 nice_K20 nice_K80; do
           evaluate "mnist_stored_$r" || exit; done ;;
  # Table 2 with 120 000 updates a row (the diagonal row first: it measured the gain of the longer
  # protocol), then the S = 5000 evaluation of the same rows, balanced over two processes (about 6
  # one-thread hours each, as measured on this machine)
  longA) LONG=1; mnist planar 0; mnist planar 80; mnist nice 10; mnist nice 40; mnist planar 20
         for r in diagonal planar_K80 nice_K10 nice_K40 planar_K20; do
           evaluate "mnist_stored_updates120k_$r" || exit; done ;;
  longB) LONG=1; mnist planar 10; mnist nice 80; mnist planar 40; mnist nice 20
         for r in planar_K10 nice_K80 planar_K40 nice_K20; do
           evaluate "mnist_stored_updates120k_$r" || exit; done ;;
  # does the wider maxout reading (400 outputs) help the planar rows that fall short? (chapter 5)
  maxout) maxout wide 80; maxout narrow 80; maxout narrow 0; maxout wide 0
          maxout narrow 80 1e-3; maxout narrow 0 1e-3 ;;
  # S = 5000 for the radial rows, two processes
  evalRA) for K in 10 40; do evaluate "mnist_stored_radial_K$K" || exit; done ;;
  evalRB) for K in 80 20; do evaluate "mnist_stored_radial_K$K" || exit; done ;;
  # the paired study of a continuation's peak rate and parameter averaging, balanced over two processes
  # (a peak of 1e-3 gained nothing in 20 000 updates in an earlier probe: +0.02 ± 0.02 nats, so the rates
  # compared are 1e-4 and 3e-4)
  studyA) baseline mnist_stored_updates120k_planar_K80; study cont20k-lr3e-4 3e-4
          study cont20k-lr3e-4-ema0.9999 3e-4 --ema 0.9999 ;;
  studyB) study cont20k-lr1e-4 1e-4; study cont20k-lr3e-4-ema0.999 3e-4 --ema 0.999 ;;
  # Adam's fused step against the default one, paired (adopted only if they agree within 0.1 nats)
  studyC) study cont20k-lr3e-4-fused 3e-4 --fused ;;
  # the closed-form Bernoulli likelihood (flowbook.models.bernoulli_log_likelihood: log, not torch's
  # unvectorized log1p) against studyC's run, which had torch's binary cross-entropy; same rule
  studyD) study cont20k-lr3e-4-fused-ll 3e-4 --fused ;;
  # Table 2's continuation stages: every row, those furthest above the paper first, balanced over
  # two processes (updates240k: 120 000 more updates; updates480k: 240 000 more, close to the paper's 500 000)
  stage240A) for r in planar:80 planar:20 planar:0 nice:20 nice:40; do stage "${r%:*}" "${r#*:}" updates120k 120000 updates240k || exit; done ;;
  stage240B) for r in planar:40 planar:10 nice:80 nice:10; do stage "${r%:*}" "${r#*:}" updates120k 120000 updates240k || exit; done ;;
  stage480A) for r in planar:80 planar:20 planar:0 nice:20; do stage "${r%:*}" "${r#*:}" updates240k 240000 updates480k || exit; done ;;
  stage480B) for r in planar:40 planar:10 nice:10 nice:40; do stage "${r%:*}" "${r#*:}" updates240k 240000 updates480k || exit; done
             nice80_480 ;;
  stage480nice80) nice80_480 ;;
  # stage480 FLOW:K...: the 480k stages of the rows named, in that order (a session's two processes split
  # what is left between them by cost, rather than by the fixed halves above)
  stage480) shift; for r in "$@"; do stage "${r%:*}" "${r#*:}" updates240k 240000 updates480k || exit; done ;;
  # the per-digit planar baselines of chapter 8's rows, then the rows, at the head cost of planar K = 20 and
  # 80 (chapter 8, section 6): each process starts with the cheap rows, so that a session that ends early has
  # one row of each family (laterA: Sylvester-H and IAF; laterB: Sylvester-T and Householder)
  pairsA) pairs_a ;;
  pairsB) pairs_b ;;
  # the diagonal Gaussian's, for chapter 8's Householder row (whose posterior is a full-covariance Gaussian)
  pairsDiagonal) superseded diagonal ;;
  laterA) pairs_a; later sylvester-h 4 --flow-option units=8 --flow-option reflections=8
          later iaf 25 --flow-option hidden=64
          later sylvester-h 16 --flow-option units=8 --flow-option reflections=8 ;;
  laterB) pairs_b; later sylvester-t 1; later householder 20; later sylvester-t 4 ;;
  # the paper's evaluation (S = 5000, all 10 000 test digits) of Table 2's final stages and of chapter 8's
  # rows, those stored so far, the cheapest first in each (resumable until DEADLINE)
  eval480) for r in diagonal planar_K10 planar_K20 planar_K40 planar_K80 nice_K10 nice_K20 nice_K40 nice_K80; do
             evaluate "mnist_stored_updates480k_$r" || exit; done ;;
  evalLater) for r in sylvester-t_K1 householder_K20 sylvester-h_K4 iaf_K25 sylvester-t_K4 sylvester-h_K16; do
               evaluate "mnist_stored_updates120k_$r" || exit; done ;;
  *) echo "usage: bash .ci/stored_runs.sh A|B|radial|radialA|radialB|cifarA|cifarB|evalA|evalB|evalRA|evalRB|longA|longB|maxout|studyA|studyB|studyC|studyD|stage240A|stage240B|stage480A|stage480B|stage480 FLOW:K...|stage480nice80|pairsA|pairsB|pairsDiagonal|laterA|laterB|eval480|evalLater" >&2
     exit 2 ;;
esac
