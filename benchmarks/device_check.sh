#!/usr/bin/env bash
# The one script to run when a GPU machine is lent (issue 21): what differs on an accelerator,
# checked and measured in one short run that leaves time for a rerun.
#
#   bash benchmarks/device_check.sh --out "$OUT"                         # on the GPU machine
#   bash benchmarks/device_check.sh --platform cpu --quick --out /tmp/dc  # the CPU dry run (CI)
#
# Parts, each under its own `timeout` (a hang costs that part only), in this order:
#   install           pip install --no-deps -e . without network (skipped where this tree's zoo
#                     is already what `import zoo` finds)
#   env               nvidia-smi, Python and package versions, jax.devices() -> env.json; fails
#                     when JAX's backend is not the expected platform
#   tests             the layers' non-CPU lowerings (recurrent, conv, ConvLSTM, runtime) and
#                     mixed precision -> tests.xml; float32 dots at full precision (the tests'
#                     tolerances are float32's, and JAX's GPU default is TF32)
#   compare_float32   benchmarks/compare.py on cnn, lstm, gru and resnet18 (5 rounds of 10 steps)
#                     in true float32: no TF32 in JAX or PyTorch, the same math as on the CPU
#   train_cnn         the presets on the bundled digits (cnn 20 epochs, lstm its 25) ->
#   train_lstm        runs/*/metrics.json
#   compare_bfloat16  compare.py in bfloat16
# then summary.json and summary.md (benchmarks/device_summary.py). Every part runs whatever the
# ones before it did; the script exits 1 when any part did not end "ok". All parts together stop
# by a deadline (440 s), so the whole run ends within 8 minutes. --quick is the dry run: three
# tests, compare.py --quick --only cnn, one-epoch presets, and Keras hidden from compare.py as
# the GPU machine has none; about a minute on a 2-core CPU.
#
# The device tool brings back at most 8 files from $OUT, so the details (logs, compare.py's
# results, the runs' metrics) end packed in details.tar.gz: $OUT keeps env.json, tests.xml,
# summary.json, summary.md and details.tar.gz.
set -u -o pipefail

usage() {
    echo "usage: bash benchmarks/device_check.sh --out DIR [--platform cpu|gpu] [--quick]"
}
refuse() {
    echo "device_check.sh: $1" >&2
    usage >&2
    exit 2
}

OUT="" PLATFORM=gpu QUICK=0
while [ $# -gt 0 ]; do
    case "$1" in
        --out) [ $# -ge 2 ] || refuse "--out needs a directory"; OUT=$2; shift 2 ;;
        --out=*) OUT=${1#--out=}; shift ;;
        --platform) [ $# -ge 2 ] || refuse "--platform needs cpu or gpu"; PLATFORM=$2; shift 2 ;;
        --platform=*) PLATFORM=${1#--platform=}; shift ;;
        --quick) QUICK=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) refuse "unknown flag '$1'" ;;
    esac
done
[ -n "$OUT" ] || refuse "--out DIR is required"
case "$PLATFORM" in
    cpu) export JAX_PLATFORMS=cpu CUDA_VISIBLE_DEVICES="" ;;  # PyTorch on the CPU too
    gpu) export JAX_PLATFORMS=cuda ;;  # JAX fails rather than falls back to the CPU
    *) refuse "--platform must be cpu or gpu, got '$PLATFORM'" ;;
esac

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
mkdir -p "$OUT/logs" || exit 1
OUT=$(cd "$OUT" && pwd)
PYTHON=${PYTHON:-python3}  # the GPU machine's python3 is the one with JAX and PyTorch
PARTS="$OUT/logs/parts.tsv"
: >"$PARTS"
export PYTHON ROOT PYTHONUNBUFFERED=1
# Several processes share the GPU (pytest's workers; JAX beside PyTorch in compare.py).
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}
DEADLINE=440   # seconds for all parts; with the summary and the packing, under 8 minutes
RESERVE=10     # the least time worth starting a part with

# part NAME CAP COMMAND...: runs COMMAND for at most CAP seconds (less when the deadline is
# nearer), its output into logs/NAME.log and on the screen, and records how it ended.
part() {
    local name=$1 cap=$2 left limit start rc status seconds
    shift 2
    left=$((DEADLINE - SECONDS))
    limit=$((cap < left ? cap : left))
    echo "=== $name (at most ${limit}s): $*"
    if [ "$limit" -lt "$RESERVE" ]; then
        echo "=== $name not started: the run's deadline is near"
        printf '%s\tnot run\t-\t0\t%s\n' "$name" "$limit" >>"$PARTS"
        return
    fi
    start=$(date +%s.%N)
    timeout --kill-after=5 "$limit" "$@" </dev/null 2>&1 | tee "$OUT/logs/$name.log"
    rc=${PIPESTATUS[0]}
    seconds=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    case $rc in
        0) status=ok ;;
        124 | 137) status=timeout ;;
        *) status=failed ;;
    esac
    echo "=== $name: $status (exit $rc, ${seconds}s)"
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$seconds" "$limit" >>"$PARTS"
}

install_zoo() {
    local found
    found=$(cd / && "$PYTHON" -c 'import os, zoo; print(os.path.dirname(zoo.__file__))' 2>/dev/null)
    if [ "$found" = "$ROOT/zoo" ]; then
        echo "zoo already installed from $ROOT: nothing to do"
        return 0
    fi
    "$PYTHON" -m pip install --no-deps --no-build-isolation --no-index -e "$ROOT"
}
export -f install_zoo

XDIST=()
if "$PYTHON" -c "import xdist" 2>/dev/null; then XDIST=(-n 8 --dist worksteal); fi
if [ "$QUICK" = 1 ]; then  # a dry run: the smallest of each part
    TESTS=(  # the recurrent layers' GPU lowering forced on the CPU, and two fast ones
        tests/training/test_precision.py tests/layers/test_recurrent.py
        -k "loss_scale or forget_bias or python_loop_of_cell and project-before-scan-False-lstm"
    )
    [ ${#XDIST[@]} = 0 ] || XDIST=(-n 0)
    COMPARE=(--quick --only cnn)
    CNN_EPOCHS=1 LSTM_EPOCHS=1
    # The GPU machine has no Keras: hidden from compare.py here too, so that it takes the same
    # path (Keras skipped with a note) and the dry run spends no time on Keras.
    mkdir -p "$OUT/logs/no_keras"
    echo 'raise ImportError("hidden by device_check.sh --quick")' >"$OUT/logs/no_keras/keras.py"
    HIDE_KERAS="$OUT/logs/no_keras:"
else
    TESTS=(
        tests/layers/test_recurrent.py tests/layers/test_cudnn.py tests/layers/test_conv.py
        tests/layers/test_convlstm.py tests/models/test_rnn.py tests/test_runtime.py
        tests/training/test_precision.py
    )
    COMPARE=(--only "cnn,lstm,gru,resnet18" --rounds 5 --steps-per-round 10)
    CNN_EPOCHS=20 LSTM_EPOCHS=25  # the CNN preset's best epoch was 13; the LSTM preset's are 25
    HIDE_KERAS=""
fi

part install 60 bash -c install_zoo
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # zoo for compare.py, even if that failed
part env 60 "$PYTHON" benchmarks/device_summary.py env --platform "$PLATFORM" --out "$OUT"
# Tests that need Keras skip themselves (importorskip); CI unset, as it makes such skips fail.
part tests 150 env -u CI JAX_DEFAULT_MATMUL_PRECISION=highest \
    "$PYTHON" -m pytest -q -p no:cacheprovider --junitxml "$OUT/tests.xml" \
    "${XDIST[@]}" "${TESTS[@]}"
part compare_float32 120 env PYTHONPATH="$HIDE_KERAS$PYTHONPATH" \
    JAX_DEFAULT_MATMUL_PRECISION=highest NVIDIA_TF32_OVERRIDE=0 \
    "$PYTHON" benchmarks/compare.py "${COMPARE[@]}" --dtype float32 --out "$OUT/compare_float32"
part train_cnn 60 "$PYTHON" train.py --model cnn --epochs "$CNN_EPOCHS" --overwrite \
    --out "$OUT/runs/cnn"
part train_lstm 60 "$PYTHON" train.py --model lstm --epochs "$LSTM_EPOCHS" --overwrite \
    --out "$OUT/runs/lstm"
part compare_bfloat16 120 env PYTHONPATH="$HIDE_KERAS$PYTHONPATH" \
    "$PYTHON" benchmarks/compare.py "${COMPARE[@]}" --dtype bfloat16 --out "$OUT/compare_bfloat16"

echo "=== summary"
QUICK_FLAG=()
[ "$QUICK" = 0 ] || QUICK_FLAG=(--quick)
timeout 20 "$PYTHON" benchmarks/device_summary.py summary --platform "$PLATFORM" --out "$OUT" \
    "${QUICK_FLAG[@]}" </dev/null 2>&1 | tee "$OUT/logs/summary.log"
summarized=${PIPESTATUS[0]}
not_ok=$(awk -F'\t' '$2 != "ok" { printf "%s ", $1 }' "$PARTS")
[ "$summarized" = 0 ] || not_ok+="summary"

# Pack the details (no checkpoints) into one file; what the summary read stays readable in it.
(cd "$OUT" && { find logs compare_float32 compare_bfloat16 runs -type f \( -name '*.json' \
    -o -name '*.jsonl' -o -name '*.md' -o -name '*.png' -o -name '*.log' -o -name '*.tsv' \) \
    2>/dev/null || true; } | tar -czf details.tar.gz -T - &&
    rm -rf logs compare_float32 compare_bfloat16 runs)
echo "=== wrote $OUT: $(cd "$OUT" && echo *)"
if [ -n "$not_ok" ]; then
    echo "=== not ok: $not_ok"
    exit 1
fi
echo "=== every part ok"
