#!/usr/bin/env bash
# One lent GPU session (a single H200), as run for docs/recipe.md, docs/scale.md and
# docs/benchmarks.md. Everything it measures is written under $OUT (at most 8 files come back):
#   recipe.json      scripts/recipe_full.py: the full-scale recipe study (issue 12)
#   checks.log       CUDA training via torchrun, a 1-rank NCCL group, paper-network step times
#   distill.json     a flow-map student distilled on the GPU from the 4000-step default run (issue 14)
#   fast.tar.*       that distilled run (split into <16 MB parts), scored on the CPU afterwards
#   logs.tar.gz      every run's log
# Usage (repository root; .gpu/worlds/{w1,w2}/{world.json,bayes_1000.json} made by
# `globeflow synthetic` as in scripts/recipe_full.py):
#   OUT=/some/dir bash benchmarks/gpu_session.sh [SECONDS]
set -u
BUDGET=${1:-560}
DEV=${DEV:-cuda}            # DEV=cpu DRY="--steps-scale 0.002 --train-rows 5000 --only f_default": a dry run
DRY=${DRY:-}
PAPER_STEPS=${PAPER_STEPS:-400}
# The packages globeflow needs beyond the GPU image's (carried as wheels in .gpu/whl).
if [ -d .gpu/whl ] && [ "$DEV" = cuda ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl
fi
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
W=/tmp/gfw
mkdir -p $W
T0=$(date +%s)
left() { echo $((BUDGET - ($(date +%s) - T0))); }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > $OUT/checks.log 2>&1
python3 -c "import torch, sys; print('torch', torch.__version__, 'python', sys.version.split()[0])" >> $OUT/checks.log 2>&1

# 1. The recipe study, 10 runs at a time; no run starts after 300 s, all stop by BUDGET-60.
python3 scripts/recipe_full.py --worlds .gpu/worlds --work $W/recipe --device $DEV --jobs 10 $DRY \
    --deadline 300 --stop $((BUDGET - 60)) --summary $OUT/recipe.json > $W/recipe.out 2>&1 &
RECIPE=$!

# 2. Checks beside it: torchrun + CUDA + streaming reader; an NCCL process group (1 rank: one
#    GPU is lent, and NCCL refuses two ranks on one device); the paper's network (d=512, 12
#    blocks) at batch 1024 on 1024-d embeddings, fp32 and bf16.
{
  echo "== 1-rank NCCL group"
  python3 - <<'PY'
import os, torch, torch.distributed as dist
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29511")
dist.init_process_group("nccl", rank=0, world_size=1)
t = torch.ones(4, device="cuda")
dist.all_reduce(t)
print("nccl all_reduce ok:", t.tolist(), "nccl version", torch.cuda.nccl.version())
dist.destroy_process_group()
PY
  echo "== paper network on 1024-d embeddings"
  python3 -m globeflow synthetic --out $W/big --types 64 --dim 1024 --train 100000 --test 100 --seed 3 >/dev/null
  for prec in float32 bfloat16; do
    for loader in memory stream; do
      python3 -m globeflow train --data $W/big/train.parquet --out $W/paper_${prec}_$loader --method rfm \
        --width 512 --depth 12 --batch-size 1024 --train-steps $PAPER_STEPS --train-precision $prec --loader $loader \
        --device $DEV --no-progress > $W/paper_${prec}_$loader.log 2>&1
      echo "$prec $loader: $(tail -n 1 $W/paper_${prec}_$loader/train_log.jsonl)"
    done
  done
  echo "== torchrun (1 process) + streaming reader on CUDA"
  torchrun --standalone --nproc_per_node=1 -m globeflow train --data $W/big/train.parquet --out $W/ddp \
    --method rfm --width 512 --depth 12 --batch-size 1024 --train-steps $PAPER_STEPS --loader stream --device $DEV \
    --no-progress > $W/ddp.log 2>&1; echo "torchrun exit $?"; tail -n 3 $W/ddp.log
} >> $OUT/checks.log 2>&1

# 3. Distil the 4000-step default run as soon as it is trained (issue 14).
while [ ! -f $W/recipe/runs/f_default/model.safetensors ] && [ "$(left)" -gt 200 ]; do sleep 5; done
if [ -f $W/recipe/runs/f_default/model.safetensors ]; then
  timeout $(( $(left) - 50 )) python3 - > $W/distill.log 2>&1 <<PY
import json, sys
from globeflow.training.distill import DistillConfig, distill_run
cfg = DistillConfig(embeddings=int("${DE:-32768}"), samples_per_embedding=8, train_steps=int("${DS:-12000}"), batch_size=2048, lr=5e-4,
                    warmup_steps=200, seed=1, progress=False)
out = distill_run("$W/recipe/runs/f_default", "$W/fast", cfg, device="$DEV",
                  log=lambda r: print(json.dumps(r), flush=True))
from globeflow.api import load
info = load(out).distill_info
json.dump(info, open("$OUT/distill.json", "w"), indent=1)
PY
  echo "distill exit $?" >> $OUT/checks.log
  tail -n 3 $W/distill.log >> $OUT/checks.log
  if [ -f $W/fast/model.safetensors ]; then
    tar -C $W -cf - fast | split -b 15m - $OUT/fast.tar.
  fi
fi

wait $RECIPE
tail -n 40 $W/recipe.out >> $OUT/checks.log
tar -C $W -czf $OUT/logs.tar.gz recipe/logs recipe/results recipe.out distill.log big/*.json 2>/dev/null
ls -la $OUT
