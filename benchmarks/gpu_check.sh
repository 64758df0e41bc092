#!/usr/bin/env bash
# The whole GPU check, for the first lent CUDA machine: about 8 minutes.
#
#   1. the CUDA tests (pytest -m gpu): training, bf16, evaluation, checkpoints, resume, sampling;
#   2. training throughput: float32 against bf16 autocast and torch.compile;
#   3. configs/ptb-medium.toml for 5 minutes, then its test perplexity.
#
# The device machine has its own python3 with CUDA torch, numpy, sentencepiece, safetensors,
# tqdm and pytest, but no network and no ../shared: before the call, copy the PTB corpus into
# an ignored folder of the checkout and carry it:
#
#   mkdir -p .device-corpora && cp -r ../shared/corpora/ptb .device-corpora/
#   grep -qx '/.device-corpora/' .git/info/exclude || echo /.device-corpora/ >> .git/info/exclude
#   device run: bash benchmarks/gpu_check.sh   (carry: [".device-corpora"], timeout_s 600)
#
# Everything is logged to $OUT/gpu_check.log (or ./gpu_check.log) so it comes back even if
# a step times out. Each step has its own time limit, so one hang cannot eat the others.
set -uo pipefail
cd "$(dirname "$0")/.."
log="${OUT:-.}/gpu_check.log"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -d .device-corpora ]; then
    export LMGEN_CORPORA="$PWD/.device-corpora"
fi
export LMGEN_CACHE="${TMPDIR:-/tmp}/lmgen-gpu-cache"
status=0
step() {  # step SECONDS TITLE COMMAND...: run one part with its own limit, keep going on failure
    local limit=$1 title=$2
    shift 2
    echo "=== $title ($(date +%T), limit ${limit}s)" | tee -a "$log"
    timeout "$limit" "$@" 2>&1 | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || { echo "=== $title: exit $rc" | tee -a "$log"; status=1; }
}

step 30 "machine" bash -c 'nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c "import torch; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.get_device_name())"'
step 150 "CUDA tests" python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py tests/test_sampling.py
step 120 "training throughput" python3 benchmarks/gpu_throughput.py --steps 20 --rounds 3
if [ -n "${LMGEN_CORPORA:-}" ] && [ -d "$LMGEN_CORPORA/ptb" ]; then
    run="${TMPDIR:-/tmp}/ptb-medium"
    step 390 "ptb-medium, 5 minutes" python3 -m lmgen train --config configs/ptb-medium.toml --device cuda \
        --out "$run" --overwrite --no-progress
    step 60 "ptb-medium test perplexity" python3 -m lmgen eval "$run" --split test --device cuda
else
    echo "=== ptb-medium skipped: no PTB corpus carried (see the top of this script)" | tee -a "$log"
fi
echo "=== done, status $status" | tee -a "$log"
exit "$status"
