#!/usr/bin/env bash
# The GPU check, for a session that is lent a GPU (one card is enough): about 8 minutes on one H200.
#
#   bash benchmarks/gpu_check.sh [WORK_DIR]      # default WORK_DIR: runs/gpu_check (or $OUT when set)
#   STAGES=a bash benchmarks/gpu_check.sh ...    # one stage only (a: correctness + memory, b: timed runs)
#
# Everything measured lands in $REPORT_DIR (default WORK_DIR) as it is measured, the most important first:
# gpu_check.md (the report), *.json (every figure); run folders and model weights stay in WORK_DIR.
#
# Stage a (parallel: independent launches share the GPU, each with its own --main_process_port; nothing
# in it is timed):
#   1. every shipped config as written, on one GPU in its own precision (only --num_processes 1, a short
#      --max_steps and an --output_dir added), and the original guide's "method 3" (--mixed_precision fp16,
#      no config file): exit codes and each run's figures;
#   2. the paths that touch tensors outside the training step, with the model on the GPU: LoRA with
#      --merge_lora, resume across layouts (ZeRO-2 -> one GPU with fused AdamW, one GPU -> ZeRO-3);
#   3. the memory grid for `disttune estimate` (benchmarks/gpu_1b.py --grid: sequence x batch, gradient
#      checkpointing, LoRA, Liger, expandable segments on/off; allocated and reserved vs the estimate);
#   4. the `gpu`-marked tests (tests/gpu).
# Stage b (timed, one launch at a time):
#   5. ours vs plain TRL on the 1.1B Llama, alternating (A B, B A, ...; the first pair is a warm-up),
#      under DDP (single_gpu.yaml) and ZeRO-3: each pair's ratio (benchmarks/overhead_vs_trl.py);
#   6. FSDP2 on the 1.1B Llama; then DDP/ZeRO-3/FSDP2 tokens/s, MFU, peak allocated and reserved next to
#      `disttune estimate` (benchmarks/gpu_1b.py).
# Stage c (optional, STAGES="a b c"): 7. Liger on and off (losses and final weights within bf16 bounds), and
#   ours vs plain TRL with Liger's kernels on both sides, DDP. Note: on CUDA our script turns Liger on by
#   default under DDP (train/kernels.py), so stage b compares ours as users run it (Liger on) with plain TRL.
# Stage d (optional, STAGES=d): 8. the ZeRO-3 bucket hypothesis (docs/benchmarks.md, GPU): ours vs plain TRL
#   with DeepSpeed's own bucket sizes written out on both sides (benchmarks/configs/zero3_deepspeed_defaults.yaml),
#   to set beside stage b's ZeRO-3 pairs, where ours derives them from the hidden size and plain TRL gets
#   DeepSpeed's defaults. A ratio near 1 here and below 1 there puts the ZeRO-3 gap on the bucket sizes.
# Stage e (optional, STAGES=e): 9. attention for packed rows: sdpa (the default; transformers gives it a dense
#   block-diagonal mask over the flattened row, so every pair of the row's 8192 tokens is computed) against
#   torch's flex_attention (block-sparse: whole blocks between documents are skipped; needs no extra package,
#   but its backward runs on GPUs only, so no CPU test can hold it): losses and final weights within bf16
#   bounds, tokens/s of each, then ours with flex_attention vs plain TRL with sdpa.
# Exits non-zero when any step failed. Needs a CUDA build of torch and the rest of requirements-lock.txt in
# the active Python (or .venv); on the lent device machine: bash .whl/on_device.sh bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
WORK="${1:-${OUT:-runs/gpu_check}}"
REPORT_DIR="${REPORT_DIR:-$WORK}"
STAGES="${STAGES:-a b}"
PAIRS="${PAIRS:-2}"
STEPS_1B="${STEPS_1B:-20}"
mkdir -p "$WORK" "$REPORT_DIR"
PY="${PYTHON:-python}"
[ -x .venv/bin/python ] && PY=.venv/bin/python
BIN="$(dirname "$("$PY" -c 'import sys; print(sys.executable)')")"
export PATH="$BIN:$PATH" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
REPORT="$REPORT_DIR/gpu_check.md"
CACHE="$WORK/cache"
FAILED="$WORK/failed_steps"
SIZE=1b SEQ=2048 BATCH=4 TINY=()
if [ "${GPU_CHECK_DRY_RUN:-0}" = 1 ]; then  # the same script on a CPU, tiny model: catches its own bugs
    SIZE=tiny SEQ=64 BATCH=2 TINY=(--tiny) STEPS_1B=10
fi
MODEL_1B="$CACHE/llama-$SIZE"
ARGS_1B=(--model_name_or_path "$MODEL_1B" --per_device_train_batch_size $BATCH --max_length $SEQ --packing true
         --attn_implementation sdpa --learning_rate 1e-4)
BUILD_1B="import sys; sys.path.insert(0, 'benchmarks'); from gpu_1b import build_model; from pathlib import Path; build_model('$SIZE', Path('$CACHE'))"

"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' || {
    echo "gpu_check: no CUDA GPU visible to $PY" >&2
    [ "${GPU_CHECK_DRY_RUN:-0}" = 1 ] || exit 1
}
if [ ! -f "$REPORT" ]; then
    {
        echo "# GPU check, $(date -u +%Y-%m-%dT%H:%MZ)"
        echo
        echo '```'
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
        "$PY" -c 'import torch, deepspeed, accelerate, transformers, trl; print("torch", torch.__version__, "cuda", torch.version.cuda, "| deepspeed", deepspeed.__version__, "| accelerate", accelerate.__version__, "| transformers", transformers.__version__, "| trl", trl.__version__)' 2>&1 | tail -1
        echo '```'
    } >"$REPORT"
fi

rm -f "$FAILED"
port=29600
launch() {  # launch NAME CONFIG|- ARGS...: one tiny-model run of the training script, own port, into WORK/NAME
    local name=$1 config=$2; shift 2
    port=$((port + 1))
    local cfg=(--config_file "accelerate_configs/$config.yaml")
    [ "$config" = method3 ] && cfg=(--mixed_precision fp16)  # the original guide's flags-only launch
    accelerate launch "${cfg[@]}" --num_processes 1 --main_process_ip 127.0.0.1 --main_process_port $port \
        07_distributed_training.py --output_dir "$WORK/$name" --overwrite_output_dir "$@"
}

step() {  # step NAME COMMAND...: run, log to WORK/NAME.log, record the exit code in WORK/NAME.rc
    local name=$1; shift
    local start=$SECONDS
    "$@" >"$WORK/$name.log" 2>&1
    local rc=$?
    echo "$rc $((SECONDS - start))" >"$WORK/$name.rc"
    [ $rc -ne 0 ] && echo "$name" >>"$FAILED"
    return $rc
}

result() {  # result NAME: the step's line for the report (exit code, seconds, its run_summary figures)
    local name=$1 rc secs
    read -r rc secs <"$WORK/$name.rc" 2>/dev/null || { rc=missing; secs=0; }
    echo "- \`$name\`: exit $rc in ${secs} s"
    [ "$rc" != 0 ] && { grep -E "disttune:|Error|error" "$WORK/$name.log" | tail -n 3 | sed 's/^/    /'; return; }
    [ -f "$WORK/$name/run_summary.json" ] && "$PY" - "$WORK/$name" <<'EOF'
import json, sys
from pathlib import Path
s = json.loads((Path(sys.argv[1]) / "run_summary.json").read_text())
gib = lambda v: "-" if v is None else f"{v / 2**30:.2f} GiB"
ev = (s.get("eval") or {}).get("after") or {}
print(f"  - {s['distributed_type']} ZeRO-{s['zero_stage']} fsdp{s['fsdp_version']}, {s['mixed_precision']}: "
      f"final loss {s['final_loss']}, {s['tokens_per_second']} tokens/s, peak allocated "
      f"{gib(s['peak_memory_bytes'][0])}, reserved {gib((s.get('peak_memory_reserved_bytes') or [None])[0])}"
      + (f", held-out exact match after {ev.get('exact_match')}" if ev else ""))
EOF
}

stage_a() {
    local short=(--max_steps 10)
    local configs=(single_gpu multi_gpu_ddp deepspeed_zero1 deepspeed_zero2 deepspeed_zero3 deepspeed_zero3_offload fsdp2)
    for c in "${configs[@]}"; do step "$c" launch "$c" "$c" "${short[@]}" & done
    step method3_fp16 launch method3_fp16 method3 "${short[@]}" &
    # the paths outside the training step, model on the GPU
    step lora_merge launch lora_merge single_gpu "${short[@]}" --use_peft true --lora_r 8 --merge_lora true &
    ( step resume_src_zero2 launch resume_src_zero2 deepspeed_zero2 --max_steps 8 --save_steps 4 &&
      step resume_zero2_to_gpu launch resume_zero2_to_gpu single_gpu --max_steps 8 --save_steps 4 \
          --resume_from_checkpoint "$WORK/resume_src_zero2/checkpoint-4" ) &
    ( step resume_src_gpu launch resume_src_gpu single_gpu --max_steps 8 --save_steps 4 &&
      step resume_gpu_to_zero3 launch resume_gpu_to_zero3 deepspeed_zero3 --max_steps 8 --save_steps 4 \
          --resume_from_checkpoint "$WORK/resume_src_gpu/checkpoint-4" ) &
    ( step build_1b "$PY" -c "$BUILD_1B" &&
      step memory_grid "$PY" benchmarks/gpu_1b.py "${TINY[@]}" --grid --parallel "${GRID_PARALLEL:-4}" \
          --max_steps 3 --cache "$CACHE" --output "$REPORT_DIR/memory_grid.json" ) &
    step pytest_gpu "$PY" -m pytest -q -m gpu tests/gpu -p no:cacheprovider &
    wait
    {
        echo; echo "## a. shipped configs as written (one GPU, own precision, 10 steps) and method 3 fp16"
        for c in "${configs[@]}" method3_fp16; do result "$c"; done
        echo; echo "## a. outside the training step, model on the GPU"
        for c in lora_merge resume_src_zero2 resume_zero2_to_gpu resume_src_gpu resume_gpu_to_zero3; do result "$c"; done
        echo; echo "## a. memory grid (1.1B Llama, 3 steps, bf16; GiB; est = disttune estimate)"
        echo '```'; tail -n 14 "$WORK/memory_grid.log" 2>/dev/null; echo '```'
        echo; echo "## a. gpu-marked tests"; result pytest_gpu; tail -n 2 "$WORK/pytest_gpu.log" | sed 's/^/    /'
    } >>"$REPORT"
}

stage_b() {
    [ -f "$MODEL_1B/config.json" ] || step build_1b "$PY" -c "$BUILD_1B"
    echo >>"$REPORT"; echo "## b. ours vs plain TRL, 1.1B Llama ($SIZE), batch $BATCH x $SEQ packed, $STEPS_1B steps, alternating" >>"$REPORT"
    for s in ddp:single_gpu zero3:deepspeed_zero3; do
        local name=${s%%:*} config=${s#*:}
        step "vs_trl_$name" "$PY" benchmarks/overhead_vs_trl.py --config "$config" --pairs "$PAIRS" \
            --max_steps "$STEPS_1B" --output "$REPORT_DIR/vs_trl_$name.json" --work "$WORK/vs_trl_$name" \
            -- "${ARGS_1B[@]}"
        { echo "### $name ($config)"; result "vs_trl_$name"; echo '```'; grep -E "^pair|^ours" "$WORK/vs_trl_$name.log"; echo '```'; } >>"$REPORT"
    done
    step fsdp2_1b "$PY" benchmarks/gpu_1b.py "${TINY[@]}" --strategies fsdp2 --max_steps "$STEPS_1B" --cache "$CACHE" \
        --output "$WORK/fsdp2_1b.json"
    local last=$PAIRS
    step strategies_1b "$PY" benchmarks/gpu_1b.py "${TINY[@]}" --seq $SEQ --batch $BATCH --cache "$CACHE" --output "$REPORT_DIR/gpu_1b.json" --collect \
        "ddp:$WORK/vs_trl_ddp/ours-$last" "zero3:$WORK/vs_trl_zero3/ours-$last" "fsdp2:$WORK/fsdp2_1b/fsdp2"
    {
        echo; echo "## b. 1.1B Llama per strategy (ours, last pair; FSDP2 alone): tokens/s, MFU, memory vs estimate (GiB)"
        result fsdp2_1b
        echo '```'; tail -n 4 "$WORK/strategies_1b.log"; echo '```'
    } >>"$REPORT"
}

stage_c() {  # the fused kernels (Liger): equal to the plain path, and ours vs plain TRL with them on both sides
    echo >>"$REPORT"; echo "## c. Liger on vs off (ours, 1.1B, DDP, $STEPS_1B steps): losses and final weights" >>"$REPORT"
    local one=(--config_file accelerate_configs/single_gpu.yaml --num_processes 1 --main_process_ip 127.0.0.1)
    step liger_on accelerate launch "${one[@]}" --main_process_port 29701 07_distributed_training.py \
        --output_dir "$WORK/liger_on" --overwrite_output_dir --max_steps "$STEPS_1B" "${ARGS_1B[@]}" --use_liger_kernel true
    step liger_off accelerate launch "${one[@]}" --main_process_port 29702 07_distributed_training.py \
        --output_dir "$WORK/liger_off" --overwrite_output_dir --max_steps "$STEPS_1B" "${ARGS_1B[@]}" --use_liger_kernel false
    step liger_equal "$PY" benchmarks/compare_runs.py "$WORK/liger_on" "$WORK/liger_off"
    { result liger_equal; sed 's/^/    /' "$WORK/liger_equal.log"; } >>"$REPORT"
    echo >>"$REPORT"; echo "## c. ours vs plain TRL, both with --use_liger_kernel true, 1.1B Llama, DDP" >>"$REPORT"
    step vs_trl_ddp_liger "$PY" benchmarks/overhead_vs_trl.py --config single_gpu --pairs "$PAIRS" \
        --max_steps "$STEPS_1B" --output "$REPORT_DIR/vs_trl_ddp_liger.json" --work "$WORK/vs_trl_ddp_liger" \
        -- "${ARGS_1B[@]}" --use_liger_kernel true
    { result vs_trl_ddp_liger; echo '```'; grep -E "^pair|^ours" "$WORK/vs_trl_ddp_liger.log"; echo '```'; } >>"$REPORT"
}

stage_d() {  # ZeRO-3 with DeepSpeed's bucket sizes on both sides: is stage b's ZeRO-3 gap the bucket sizes?
    [ -f "$MODEL_1B/config.json" ] || step build_1b "$PY" -c "$BUILD_1B"
    echo >>"$REPORT"; echo "## d. ours vs plain TRL, ZeRO-3 with DeepSpeed's bucket sizes on both sides (1.1B, $STEPS_1B steps)" >>"$REPORT"
    step vs_trl_zero3_ds_buckets "$PY" benchmarks/overhead_vs_trl.py \
        --config benchmarks/configs/zero3_deepspeed_defaults.yaml --pairs "$PAIRS" --max_steps "$STEPS_1B" \
        --output "$REPORT_DIR/vs_trl_zero3_ds_buckets.json" --work "$WORK/vs_trl_zero3_ds_buckets" -- "${ARGS_1B[@]}"
    { result vs_trl_zero3_ds_buckets; echo '```'; grep -E "^pair|^ours" "$WORK/vs_trl_zero3_ds_buckets.log"; echo '```'; } >>"$REPORT"
}

stage_e() {  # attention for packed rows: sdpa vs flex_attention (equal? faster?), then flex vs plain TRL's sdpa
    [ -f "$MODEL_1B/config.json" ] || step build_1b "$PY" -c "$BUILD_1B"
    echo >>"$REPORT"; echo "## e. attention for packed rows: sdpa vs flex_attention (ours, 1.1B, DDP, $STEPS_1B steps)" >>"$REPORT"
    local one=(--config_file accelerate_configs/single_gpu.yaml --num_processes 1 --main_process_ip 127.0.0.1)
    local flex=("${ARGS_1B[@]/sdpa/flex_attention}")
    step attn_sdpa accelerate launch "${one[@]}" --main_process_port 29711 07_distributed_training.py \
        --output_dir "$WORK/attn_sdpa" --overwrite_output_dir --max_steps "$STEPS_1B" "${ARGS_1B[@]}"
    step attn_flex accelerate launch "${one[@]}" --main_process_port 29712 07_distributed_training.py \
        --output_dir "$WORK/attn_flex" --overwrite_output_dir --max_steps "$STEPS_1B" "${flex[@]}"
    step attn_equal "$PY" benchmarks/compare_runs.py "$WORK/attn_sdpa" "$WORK/attn_flex"
    { result attn_sdpa; result attn_flex; result attn_equal; sed 's/^/    /' "$WORK/attn_equal.log"; } >>"$REPORT"
    step vs_trl_ddp_flex "$PY" benchmarks/overhead_vs_trl.py --config single_gpu --pairs "$PAIRS" \
        --max_steps "$STEPS_1B" --output "$REPORT_DIR/vs_trl_ddp_flex.json" --work "$WORK/vs_trl_ddp_flex" \
        --ours_args "--attn_implementation flex_attention" -- "${ARGS_1B[@]}"
    { echo "### ours flex_attention vs plain TRL sdpa (DDP)"; result vs_trl_ddp_flex; echo '```'; grep -E "^pair|^ours" "$WORK/vs_trl_ddp_flex.log"; echo '```'; } >>"$REPORT"
}

for s in $STAGES; do "stage_$s"; done
echo >>"$REPORT"; echo "failed steps: $(cat "$FAILED" 2>/dev/null | tr '\n' ' ')" >>"$REPORT"
(cd "$WORK" && find . \( -name '*.log' -o -name 'run_summary.json' -o -name '*.jsonl' -o -name '*.rc' \) \
    -not -path '*/final*' -not -path '*/checkpoint-*' -not -path './cache/*' | tar czf "$REPORT_DIR/logs-$(echo $STAGES | tr -d ' ').tgz" -T -)
cat "$REPORT"
[ ! -s "$FAILED" ]
