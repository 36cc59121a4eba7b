#!/usr/bin/env bash
# The GPU check, for a session that is lent a GPU (one card is enough): about 6 minutes on an H100/H200.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]          # default OUT_DIR: runs/gpu_check (or $OUT when set)
#
# 1. the `gpu`-marked tests (tests/gpu);
# 2. every shipped config as written, on one GPU in its own precision (bf16): only --num_processes 1,
#    a short --max_steps and an --output_dir are added; then the original guide's "method 3"
#    (`--num_processes 1 --mixed_precision fp16`, no config file);
# 3. benchmarks/gpu_1b.py: a 1.1B Llama, DDP and ZeRO-3, tokens/s, MFU, peak memory (allocated and
#    reserved) next to `disttune estimate`.
# Everything measured lands in OUT_DIR/gpu_check.md (plus gpu_1b.json and each run's log); the script
# exits non-zero when any step failed. It needs a CUDA build of torch 2.13.0 and the rest of
# requirements-lock.txt in the active Python (or .venv, which `make install` creates).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-runs/gpu_check}}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python}"
[ -x .venv/bin/python ] && PY=.venv/bin/python
BIN="$(dirname "$("$PY" -c 'import sys; print(sys.executable)')")"
export PATH="$BIN:$PATH" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
REPORT="$OUT_DIR/gpu_check.md"
failures=0

"$PY" -c 'import torch' 2>/dev/null || {
    echo "gpu_check: $PY cannot import torch: install a CUDA build of torch==2.13.0, then make install" >&2
    exit 1
}
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' || {
    echo "gpu_check: no CUDA GPU visible to $PY (torch $("$PY" -c 'import torch; print(torch.__version__)'))" >&2
    exit 1
}
{
    echo "# GPU check, $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo '```'
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
    "$PY" -c 'import torch, deepspeed, accelerate, transformers, trl; print("torch", torch.__version__, "cuda", torch.version.cuda, "| deepspeed", deepspeed.__version__, "| accelerate", accelerate.__version__, "| transformers", transformers.__version__, "| trl", trl.__version__)'
    echo '```'
    echo
} >"$REPORT"

step() {  # step NAME COMMAND...: run, time, log, and add a line to the report
    local name=$1; shift
    local start=$SECONDS
    "$@" >"$OUT_DIR/$name.log" 2>&1
    local rc=$?
    [ $rc -ne 0 ] && failures=$((failures + 1))
    echo "- \`$name\`: exit $rc in $((SECONDS - start)) s" >>"$REPORT"
    return $rc
}

summary() {  # summary RUN_DIR: the figures of run_summary.json as one markdown line
    "$PY" - "$1" >>"$REPORT" <<'EOF'
import json, sys
from pathlib import Path
s = json.loads((Path(sys.argv[1]) / "run_summary.json").read_text())
gib = lambda v: "-" if v is None else f"{v / 2**30:.2f} GiB"
print(f"  - {s['distributed_type']} ZeRO-{s['zero_stage']} fsdp{s['fsdp_version']}, {s['mixed_precision']}, "
      f"world {s['world_size']}: final loss {s['final_loss']}, {s['tokens_per_second']} tokens/s, "
      f"peak allocated {gib(s['peak_memory_bytes'][0])}, reserved {gib((s.get('peak_memory_reserved_bytes') or [None])[0])}")
EOF
}

echo "## gpu-marked tests" >>"$REPORT"
step pytest_gpu "$PY" -m pytest -q -m gpu tests/gpu
tail -n 3 "$OUT_DIR/pytest_gpu.log" | sed 's/^/    /' >>"$REPORT"

echo >>"$REPORT"; echo "## shipped configs as written, one GPU, own precision, 10 steps" >>"$REPORT"
for config in accelerate_configs/*.yaml; do
    name=$(basename "$config" .yaml)
    step "$name" accelerate launch --config_file "$config" --num_processes 1 07_distributed_training.py \
        --max_steps 10 --output_dir "$OUT_DIR/$name" --overwrite_output_dir && summary "$OUT_DIR/$name"
done
step method3_fp16 accelerate launch --num_processes 1 --mixed_precision fp16 07_distributed_training.py \
    --max_steps 10 --output_dir "$OUT_DIR/method3_fp16" --overwrite_output_dir && summary "$OUT_DIR/method3_fp16"

echo >>"$REPORT"; echo "## benchmarks/gpu_1b.py (1.1B Llama, bf16, sequence 2048)" >>"$REPORT"
step gpu_1b "$PY" benchmarks/gpu_1b.py --max_steps 20 --output "$OUT_DIR/gpu_1b.json"
echo '```' >>"$REPORT"; tail -n 12 "$OUT_DIR/gpu_1b.log" >>"$REPORT"; echo '```' >>"$REPORT"

echo >>"$REPORT"; echo "failed steps: $failures" >>"$REPORT"
cat "$REPORT"
exit $((failures > 0))
