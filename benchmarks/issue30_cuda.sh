#!/usr/bin/env bash
# Issue 30's device check in one go: the gpu tests, then both kernel benchmarks with
# every LSTM route that is to be compared on the device. From the checkout's root:
#
#   bash .device/run.sh bash benchmarks/issue30_cuda.sh            # on the GPU machine
#   DEVICE=cpu QUICK=1 bash benchmarks/issue30_cuda.sh              # its code paths here
#
# QUICK=1 shrinks every run (one repeat, one model/shape each) to check the script itself.
# Each command's output goes to stdout under a "== " header; a failing command is
# reported and the rest still run; the exit status is the number of failures.
set -u
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
[[ -x .venv/bin/python && $DEVICE == cpu ]] && PY=$PWD/.venv/bin/python
failures=0
run() {
  echo "== $*"
  "$@" || { echo "== FAILED ($?): $*"; failures=$((failures + 1)); }
}
if [[ ${QUICK:-0} == 1 ]]; then
  reps=(--repeats 1) dp_models=(--models lstm) sd_shapes=(--shapes char-lm-b64 --ps 0.5)
else
  reps=(--repeats 5) dp_models=() sd_shapes=()
fi
fast_only=(--skip naive,opacus-hooks,opacus-ghost --models lstm,charlstm)
[[ ${QUICK:-0} == 1 ]] && fast_only=(--skip naive,opacus-hooks,opacus-ghost --models lstm)
triton_ok=$($PY -c "import triton" 2>/dev/null && echo 1 || echo 0)
if [[ $DEVICE == cuda ]]; then
  run $PY -m pytest -m gpu -q -p no:cacheprovider
fi
cd benchmarks || exit 1
run $PY dp_clipping.py --device "$DEVICE" "${reps[@]}" "${dp_models[@]}"
run $PY dp_clipping.py --device "$DEVICE" "${reps[@]}" "${fast_only[@]}" --recurrence step-loop
run $PY structured_dropout.py --device "$DEVICE" "${reps[@]}" "${sd_shapes[@]}"
if [[ $triton_ok == 1 && $DEVICE == cuda ]]; then
  run $PY dp_clipping.py --device "$DEVICE" "${reps[@]}" "${fast_only[@]}" --recurrence triton
  run $PY structured_dropout.py --device "$DEVICE" "${reps[@]}" "${sd_shapes[@]}" \
    --impls structured,torch,structured-loop --recurrence triton
else
  echo "== triton rows skipped (device $DEVICE, triton importable: $triton_ok)"
fi
echo "== failures: $failures"
exit "$failures"
