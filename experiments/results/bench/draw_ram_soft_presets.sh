#!/bin/bash
# ram, soft and draw in alternation on each task, one thread; one JSON line per run.
cd "$(dirname "$0")/../../.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 NUMBA_NUM_THREADS=1
out=${1:-experiments/results/bench/draw_ram_soft_presets.jsonl}; : > "$out"
for round in 1 2; do
  for task in mnist translated60 cluttered60 cluttered100; do
    for model in ram soft draw; do
      python -m glimpse.bench --repeats 3 experiment=${model}_${task} 2>/dev/null \
        | python3 -c "import json,sys; d=json.load(sys.stdin); d.update(round=$round, preset='${model}_${task}'); print(json.dumps(d))" >> "$out"
    done
  done
done
