#!/usr/bin/env bash
# The GPU check: every figure the project reports for CUDA, from one prepared script, as JSON lines.
#
#   benchmarks/gpu_check.sh --prepare          # here, with network: wheels the device image lacks -> .whl/
#   benchmarks/gpu_check.sh [--out DIR]        # on one H100 / H200 (about 8 minutes): DIR/gpu_check.jsonl
#   benchmarks/gpu_check.sh --dry-run          # any CPU: the same steps at tiny sizes (what tests/test_gpu_check.py runs)
#
# Steps, each appending one JSON object per measurement to DIR/gpu_check.jsonl ({"step": ..., "rc": ..., results}):
#   model      bench_model.py, presets small (8 x 32 frames) and large (4 x 32), attention eager, sdpa without the
#              soft cap, flex_attention with it, eager and compiled; bf16 autocast with fp32 master weights; MFU
#              against a bf16 matmul timed in the same process
#   train      bench_train.py at the large preset: the loop's step against a bare step with the same losses and
#              routing (bootstrap included), and the bootstrap passes' own cost
#   inference  bench_inference.py: act() p50 / p99 at batch 1 with 16 and 192 frames of context (small preset) and
#              in the live configuration (medium, ~127M parameters, 16 frames), eager and compiled; rollouts at 64
#   runs       train.py through `accelerate launch`: FSDP2 (fsdp.yaml) and DDP (multi_gpu.yaml), one process each,
#              an agent run that checkpoints, resumes from its first checkpoint and writes final/ (the resumed final
#              compared with the straight one), then phase 3 and the tokenizer stage
#   tests      the test suite's GPU-marked tests
# Every step runs under a time limit and the script goes on after a failure (its rc is recorded).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DRY=0
OUT=${OUT:-gpu_check_output}
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) OUT=$2; shift ;;
    --prepare)
      # The device image has torch, transformers, accelerate, scikit-learn, pillow and pyarrow, not these.
      rm -rf .whl && mkdir -p .whl
      grep -qxF "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
      python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "datasets==5.2.0" "dill>=0.3.0,<0.4.2" "multiprocess<0.70.20" "gymnasium>=1.0" "farama-notifications"
      echo "wheels in .whl/ (carry it); on the device: benchmarks/gpu_check.sh --out \$OUT"
      exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
RESULTS=$OUT/gpu_check.jsonl
: > "$RESULTS"
PY=${PYTHON:-python3}
if [[ -d .whl ]] && ls .whl/*.whl >/dev/null 2>&1 && ! $PY -c "import datasets, gymnasium" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/gpu_check_site .whl/*.whl
  export PYTHONPATH=/tmp/gpu_check_site:${PYTHONPATH:-}
fi
export PYTHONPATH=$ROOT:${PYTHONPATH:-} PYTHONUNBUFFERED=1

# record STEP LIMIT COMMAND...: run it, keep its log, append its last line (a JSON object) tagged with the step.
record() {
  local step=$1 limit=$2; shift 2
  local log=$OUT/$(echo "$step" | tr ' /' '__').log
  timeout "$limit" "$@" > "$log" 2>&1
  local rc=$?
  $PY - "$step" "$rc" "$log" >> "$RESULTS" <<'EOF'
import json, sys
step, rc, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
lines = [line for line in open(log, errors="replace").read().splitlines() if line.strip()]
result = {}
if lines:
    try:
        result = json.loads(lines[-1])
    except ValueError:
        result = {"last_line": lines[-1][-300:]}
print(json.dumps({"step": step, "rc": rc, **(result if isinstance(result, dict) else {"result": result})}))
EOF
  echo "gpu_check: $step rc=$rc"
}

if [[ $DRY == 1 ]]; then
  # flex_attention has no backward pass on a CPU, and compiling takes minutes there: both only on CUDA.
  SHAPE="8 4 4"; PRESETS="tiny"; MODEL_SIZE="--batch-size 1 --frames 4 --repeats 1 --steps-per-repeat 1 --warmup 0"
  COMPILES=""; ATTENTIONS=("eager" "sdpa --softcap 0")
  TRAIN_ARGS="--preset tiny --batch-size 2 --frames 8 --steps 2 --warmup 1"
  INFER=("--preset tiny --context 8 --frames 4 --horizon 2 --rollout-batch 2")
  LAUNCH_CONFIGS="cpu"; STEPS=4; LIMIT=300
else
  SHAPE="32 16 16"; PRESETS="small large"; COMPILES="--compile"
  TRAIN_ARGS="--preset large --batch-size 4 --frames 32 --steps 8 --warmup 3"
  INFER=("--preset small --context 16 --frames 50 --rollout-batch 64 --horizon 8"
         "--preset small --context 192 --frames 50 --rollout-batch 0"
         "--live --frames 100" "--live --frames 100 --compile")
  LAUNCH_CONFIGS="fsdp multi_gpu"; STEPS=6; LIMIT=420
  ATTENTIONS=("eager" "sdpa --softcap 0" "flex_attention")
fi

$PY -c "import json, torch, transformers, accelerate; print(json.dumps({'torch': torch.__version__, \
'transformers': transformers.__version__, 'accelerate': accelerate.__version__, 'cuda': torch.cuda.is_available(), \
'device': torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'}))" > "$OUT/env.log" 2>&1
record "environment" 60 cat "$OUT/env.log"

# ---- model step: presets x attention x compile ----
for preset in $PRESETS; do
  if [[ $DRY == 1 ]]; then size=$MODEL_SIZE; elif [[ $preset == large ]]; then size="--batch-size 4 --frames 32 --repeats 3"; else size="--batch-size 8 --frames 32 --repeats 3"; fi
  for attn in "${ATTENTIONS[@]}"; do
    for compile in "" $COMPILES; do
      record "model $preset $attn $compile" $LIMIT $PY benchmarks/bench_model.py --preset $preset $size \
        --latent-shape $SHAPE --attn-implementation $attn $compile
    done
  done
done

# ---- the loop's step against the bare step with the same losses ----
record "train" $LIMIT $PY benchmarks/bench_train.py $TRAIN_ARGS --latent-shape $SHAPE --workdir "$OUT/bench_train"

# ---- act() latency and rollouts ----
for config in "${INFER[@]}"; do
  record "inference $config" $LIMIT $PY benchmarks/bench_inference.py $config --latent-shape $SHAPE
done

# ---- multi-process runs: train, checkpoint, resume, final/ ----
DATA=$OUT/data
$PY -m data.synthetic --output "$DATA/raw" --num-videos 8 --frames 120 --latent-shape 8 4 4 > "$OUT/data.log" 2>&1
$PY -m data.prepare --latents-dir "$DATA/raw/latents" --features-dir "$DATA/raw/features" --output "$DATA/prepared" \
  --overwrite --no-progress >> "$OUT/data.log" 2>&1
TINY='{"hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "time_every": 2, "k_max": 8}'
COMMON=(--dataset_path "$DATA/prepared" --window_length 8 --per_device_train_batch_size 4 --report_to none
        --logging_steps 1 --eval_steps 0 --max_eval_windows 8 --learning_rate 0.001 --seed 3)
for name in $LAUNCH_CONFIGS; do
  run=$OUT/runs/$name
  launch=(accelerate launch --config_file accelerate_configs/$name.yaml --num_processes 1 train.py)
  [[ $name == cpu ]] && launch=($PY train.py)
  record "run $name agent" $LIMIT "${launch[@]}" --stage agent "${COMMON[@]}" --model_overrides "$TINY" \
    --output_dir "$run/agent" --overwrite_output_dir true --max_steps $STEPS --save_steps 2
  mkdir -p "$run/resumed" && cp -r "$run/agent/checkpoint-2" "$run/resumed/" 2>/dev/null
  record "run $name resume" $LIMIT "${launch[@]}" --stage agent "${COMMON[@]}" --model_overrides "$TINY" \
    --output_dir "$run/resumed" --max_steps $STEPS --save_steps 2 --resume_from_checkpoint latest
  record "run $name resume is bitwise" 60 $PY - "$run/agent/final" "$run/resumed/final" <<'EOF'
import json, sys
from safetensors.torch import load_file
a, b = load_file(f"{sys.argv[1]}/model.safetensors"), load_file(f"{sys.argv[2]}/model.safetensors")
differ = [k for k in a if not (a[k] == b[k]).all()]
print(json.dumps({"tensors": len(a), "differ": len(differ), "first": differ[:3], "bitwise": not differ}))
EOF
  record "run $name final loads" 60 $PY -c "import json, sys; from modeling_dreamer import DreamerAgentModel; \
m = DreamerAgentModel.from_pretrained('$run/agent/final'); print(json.dumps({'parameters': sum(p.numel() for p in m.parameters())}))"
  record "run $name imagination" $LIMIT "${launch[@]}" --stage imagination "${COMMON[@]}" \
    --init_from "$run/agent/final" --output_dir "$run/imagination" --overwrite_output_dir true --max_steps 2 \
    --save_steps 0 --imagination_horizon 4 --imagination_context 4 --imagination_num_steps 2
done
$PY -m envs.record --env CoinGame-v0 --policy envs.scripted_player:scripted_policy --episodes 4 --seed 0 \
  --frame-size 32 --max-steps 40 --output "$DATA/recording" --overwrite --no-progress > "$OUT/recording.log" 2>&1
for name in $LAUNCH_CONFIGS; do
  launch=(accelerate launch --config_file accelerate_configs/$name.yaml --num_processes 1 train.py)
  [[ $name == cpu ]] && launch=($PY train.py)
  record "run $name tokenizer" $LIMIT "${launch[@]}" --stage tokenizer --dataset_path "$DATA/recording" \
    --output_dir "$OUT/runs/$name/tokenizer" --overwrite_output_dir true --window_length 4 \
    --per_device_train_batch_size 4 --max_steps $STEPS --save_steps 2 --report_to none --logging_steps 1 \
    --validation_episode_fraction 0.25
done

# ---- the GPU-marked tests (skipped without CUDA) ----
record "tests gpu" $LIMIT $PY -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py
echo "gpu_check: results in $RESULTS"
