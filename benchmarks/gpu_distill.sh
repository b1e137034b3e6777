#!/usr/bin/env bash
# Issue 14, item 1, on one lent GPU: a held-out known-truth world (a seed no study used), its
# teacher (README defaults: rfm, width 256, depth 6, batch 512, 4000 steps), and distillations
# at four budgets, each scored against the teacher by benchmarks/bench_distill.py. Under $OUT:
#   world.json            the world (globeflow synthetic)
#   bench_<name>.json     bench_distill.py of each student (GeoScore, PRDC, HPD coverage)
#   logs.tar.gz           every log (teacher, distillations, benches)
# Usage (repository root): OUT=dir bash benchmarks/gpu_distill.sh [SECONDS]
# Dry run on a CPU: DEV=cpu SCALE=tiny OUT=dir bash benchmarks/gpu_distill.sh 600
set -u
BUDGET=${1:-540}
DEV=${DEV:-cuda}
SCALE=${SCALE:-full}
if [ "$SCALE" = full ]; then
  ROWS=200000; TEACHER_STEPS=4000; K=1
else
  ROWS=4000; TEACHER_STEPS=60; K=100   # K divides the distillation budgets
fi
if [ -d .gpu/whl ] && [ "$DEV" = cuda ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl
fi
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
W=${WORK:-/tmp/gfd}
mkdir -p "$W" "$OUT"
T0=$(date +%s)
left() { echo $((BUDGET - ($(date +%s) - T0))); }
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*" >> "$OUT/session.log"; }

python3 -c "import torch, sys; print('torch', torch.__version__, 'python', sys.version.split()[0], 'cuda', torch.cuda.is_available())" > "$OUT/session.log" 2>&1
python3 -m globeflow synthetic --out "$W/world" --types 24 --dim 128 --families 6 --train $ROWS --test 2000 \
    --seed 29 > "$W/world.log" 2>&1
cp "$W/world/world.json" "$OUT/" 2>/dev/null
stamp "world written"
python3 -m globeflow train --data "$W/world/train.parquet" --out "$W/teacher" --method rfm --width 256 --depth 6 \
    --batch-size 512 --train-steps $TEACHER_STEPS --device "$DEV" --no-progress > "$W/teacher.log" 2>&1
stamp "teacher trained (exit $?)"

# name: embeddings samples-per-embedding train-steps batch ema-decay
distill() {
  local name=$1 emb=$2 per=$3 steps=$4 batch=$5 ema=$6
  timeout $(( $(left) - 75 )) python3 -m globeflow distill --model "$W/teacher" --out "$W/$name" \
      --embeddings $((emb / K > 64 ? emb / K : 64)) --samples-per-embedding $per --train-steps $((steps / K)) \
      --batch-size $batch --ema-decay $ema --warmup-steps $((200 / K)) --seed 1 --device "$DEV" > "$W/$name.log" 2>&1
  stamp "$name distilled (exit $?)"
}
bench() {
  local name=$1
  [ -f "$W/$name/model.safetensors" ] || { stamp "$name: no model, no bench"; return; }
  timeout $(( $(left) > 20 ? $(left) - 10 : 10 )) python3 benchmarks/bench_distill.py --teacher "$W/teacher" \
      --fast "$W/$name" --data "$W/world/test.parquet" --device "$DEV" --threads 2 --teacher-cache "$W/teacher_cache.npz" \
      --json "$OUT/bench_$name.json" > "$W/bench_$name.log" 2>&1
  stamp "$name benched (exit $?)"
}

# name:embeddings:samples-per-embedding:train-steps:batch:ema-decay, all trained at once; each
# bench runs as soon as its student is written (the first one writes the teacher's cache).
# First session: the CPU default (2500 steps of 256 on 4096 x 4 trajectories) with and without
# EMA, and two larger budgets; the second session (CONFIGS=...) the budgets beyond.
CONFIGS=${CONFIGS:-"cpu_default:4096:4:2500:256:0 cpu_default_ema:4096:4:2500:256:0.999 mid_ema:16384:8:8000:512:0.999 big_ema:32768:8:8000:2048:0.9995"}
PIDS=()
for c in $CONFIGS; do
  IFS=: read -r name emb per steps batch ema <<< "$c"
  distill "$name" "$emb" "$per" "$steps" "$batch" "$ema" &
  PIDS+=($!)
done
i=0
for c in $CONFIGS; do
  wait "${PIDS[$i]}"; bench "${c%%:*}"; i=$((i + 1))
done
stamp "done"
tar -czf "$OUT/logs.tar.gz" -C "$W" $(cd "$W" && ls *.log) 2>/dev/null
exit 0
