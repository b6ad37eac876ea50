#!/usr/bin/env bash
# The paired verdicts beside the README's glance table: benchmarks/seed_table.py --against the
# defaults, over the runs of each column. lenet5 at 10% has its own five-seed comparison
# (compactcnn compare --seeds, session 18); these are the other four columns. A run since
# session 14 is named by its folder, read from the folder where it is on this machine and from
# benchmarks/results/run-records.jsonl where it is not (--record keeps the record of each
# folder read); one from sessions 7 to 13, whose folder is gone, by the figure the README's
# tables and results files recorded for it, SEED:ACCURACY.
#   benchmarks/verdicts.sh [OUT_DIR]    (default benchmarks/results; PYTHON picks the python)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/results}
mkdir -p "$out"
table() { PYTHONPATH=src "${PYTHON:-.venv/bin/python}" benchmarks/seed_table.py --record "$@"; }
# how the older run folders name a seed: nothing for seed 0, "-sS" otherwise
suffix() { [ "$1" = 0 ] || echo "-s$1"; }
s14=runs/s14 s18=runs/s18

# the seeds that later sessions added to a vgg_small column at 4 epochs, as METHOD:SEED
added() {
  case $1 in
    p10) echo "s19 l1-filter:3 l1-filter:4 evolutionary:3 evolutionary:4 slimming:2 filtermap:1"
         echo "s19 filtermap:2" ;;
    p05) echo "s19 l1-filter:3 l1-filter:4 slimming:2 filtermap:1 filtermap:2"
         echo "s20 evolutionary:3 evolutionary:4 group-sqrt-cost:2" ;;
  esac
  echo "s20 group:3 group:4 group-sqrt-cost:3 group-sqrt-cost:4 slimming:3 slimming:4"
  echo "s20 filtermap:3 filtermap:4"
}

# vgg_small at budget $1 (p10, p05): ours and its widths from scratch, five seeds (session 14),
# and the seeds that sessions 19 and 20 added (dense's 3 and 4 in session 20)
ours_and_scratch() {
  local s session run runs glr=() scratch=() late=()
  for s in 0 1 2 3 4; do
    glr+=("ours=$s14/vgg-$1-e4-glr$(suffix $s)")
    scratch+=("scratch=$s14/vgg-$1-e4-scratch-glr$(suffix $s)")
  done
  while read -r session runs; do
    for run in $runs; do
      late+=("${run%%:*}=runs/$session/vgg-$1-e4-${run%%:*}-s${run##*:}")
    done
  done < <(added "$1")
  for s in 3 4; do late+=("dense=runs/s20/vgg-dense-e4-s$s"); done
  vgg=("${glr[@]}" "${scratch[@]}" "${late[@]}")
}

ours_and_scratch p10
table "${vgg[@]}" dense=0:93.02 dense=1:93.02 dense=2:93.27 \
  group-sqrt-cost=0:92.68 group-sqrt-cost=1:92.40 group-sqrt-cost=2:92.37 \
  group=0:92.32 group=1:92.28 group=2:92.05 \
  torch-pruning=0:92.02 torch-pruning=1:92.08 torch-pruning=2:92.07 \
  torch-pruning=$s18/vgg-p10-e4-torch-pruning-s3 torch-pruning=$s18/vgg-p10-e4-torch-pruning-s4 \
  uniform=0:92.15 uniform=1:92.17 uniform=2:92.47 \
  uniform=$s18/vgg-p10-e4-uniform-s3 uniform=$s18/vgg-p10-e4-uniform-s4 \
  l1-filter=0:92.09 l1-filter=1:92.08 l1-filter=$s14/vgg-p10-e4/l1-filter-s2 \
  evolutionary=0:91.90 evolutionary=$s14/vgg-p10-e4/evolutionary-s1 \
  evolutionary=$s14/vgg-p10-e4/evolutionary-s2 \
  slimming=0:91.66 slimming=$s14/vgg-p10-e4/slimming-s1 filtermap=$s14/vgg-p10-e4/filtermap \
  --against ours --out "$out"/verdicts-vgg_small-p10-e4.md

ours_and_scratch p05
table "${vgg[@]}" dense=0:93.02 dense=1:93.02 dense=2:93.27 \
  group-sqrt-cost=0:91.67 group-sqrt-cost=1:91.94 \
  group=0:91.90 group=1:91.99 group=2:91.72 \
  torch-pruning=0:91.36 torch-pruning=1:91.16 torch-pruning=2:91.11 \
  torch-pruning=$s18/vgg-p05-e4-torch-pruning-s3 torch-pruning=$s18/vgg-p05-e4-torch-pruning-s4 \
  uniform=0:91.62 uniform=1:91.74 uniform=2:91.82 \
  uniform=$s18/vgg-p05-e4-uniform-s3 uniform=$s18/vgg-p05-e4-uniform-s4 \
  l1-filter=0:91.35 l1-filter=$s14/vgg-p05-e4/l1-filter-s1 l1-filter=$s14/vgg-p05-e4/l1-filter-s2 \
  evolutionary=0:91.45 evolutionary=$s14/vgg-p05-e4/evolutionary-s1 \
  evolutionary=$s14/vgg-p05-e4/evolutionary-s2 \
  slimming=0:90.71 slimming=$s14/vgg-p05-e4/slimming-s1 filtermap=$s14/vgg-p05-e4/filtermap \
  --against ours --out "$out"/verdicts-vgg_small-p05-e4.md

# lenet5 at 5%: seeds 0 to 2 from sessions 10 to 12 (the README's table under "lenet5 at 10%
# and 5%"); seeds 3 and 4 of every method from session 18's comparisons; the filter map's seeds 1
# and 2 and the group term's 3 and 4 from session 20
p05=$s18/cmp-lenet5-p05 p10=$s18/cmp-lenet5-p10
late=()
for s in 3 4; do
  late+=("dense=$p10/seed-$s/dense")
  for m in group+low-rank torch-pruning evolutionary scratch l1-filter uniform filtermap; do
    late+=("$([ $m = group+low-rank ] && echo ours || echo $m)=$p05/seed-$s/$m")
  done
done
late+=("filtermap=runs/s20/lenet5-p05-e14-filtermap-s1" "filtermap=runs/s20/lenet5-p05-e14-filtermap-s2"
       "group=runs/s20/lenet5-p05-e14-group-s3" "group=runs/s20/lenet5-p05-e14-group-s4")
table ours=0:90.63 ours=1:90.64 ours=2:90.60 dense=0:91.79 dense=1:91.47 dense=2:91.77 \
  evolutionary=0:90.39 evolutionary=1:90.33 evolutionary=2:90.20 \
  group=0:90.33 group=1:90.13 group=2:90.46 \
  torch-pruning=0:90.43 torch-pruning=1:90.20 torch-pruning=2:89.98 \
  scratch=0:90.33 scratch=1:90.47 scratch=2:90.63 \
  l1-filter=0:89.97 l1-filter=1:89.70 l1-filter=2:89.97 \
  uniform=0:89.90 uniform=1:89.44 uniform=2:89.61 filtermap=0:90.24 "${late[@]}" \
  --against ours --out "$out"/verdicts-lenet5-p05-e14.md

# one seed's runs at 8 epochs into e8: BUDGET SEED SESSION DENSE_SESSION METHOD...; ours and
# its widths from scratch are named alike in every session, session 15 kept the baselines in one
# folder per budget (vgg-P-e8/M-sS), later sessions beside the others (vgg-P-e8-M-sS)
e8_seed() {
  local sx m; sx=$(suffix "$2")
  e8+=("dense=runs/$4/vgg-dense-e8$sx" "ours=runs/$3/vgg-$1-e8-glr$sx")
  for m in "${@:5}"; do
    case $m:$3 in
      scratch:*) e8+=("scratch=runs/$3/vgg-$1-e8-scratch-glr$sx") ;;
      *:s15) e8+=("$m=runs/s15/vgg-$1-e8/$m$sx") ;;
      *) e8+=("$m=runs/$3/vgg-$1-e8-$m$sx") ;;
    esac
  done
}

# vgg_small at 10% with 8 epochs: seeds 0 to 2 from session 15, 3 and 4 from session 19
e8=()
for s in 0 1 2; do e8_seed p10 $s s15 s15 scratch torch-pruning uniform; done
for s in 3 4; do e8_seed p10 $s s19 s19 scratch torch-pruning uniform; done
table "${e8[@]}" --against ours --out "$out"/verdicts-vgg_small-p10-e8.md

# vgg_small at 5% with 8 epochs: seeds 0 and 1 from session 15, seed 2 from session 20 (dense's
# seed 2 from session 15)
e8=()
for s in 0 1; do e8_seed p05 $s s15 s15 torch-pruning; done
e8_seed p05 2 s20 s15 torch-pruning
table "${e8[@]}" --against ours --out "$out"/verdicts-vgg_small-p05-e8.md
