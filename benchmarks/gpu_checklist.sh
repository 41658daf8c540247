#!/usr/bin/env bash
# The GPU checklist, as one command on a CUDA machine (see README "Performance"):
#   epoch time of CE / L2RW / L2B (fp32 and bf16), bf16-vs-fp32 meta-weight agreement, step cost,
#   and every method trained, resumed, scored and reported on the GPU (device_check.py).
# Each step appends its table to benchmarks/RESULTS.md in this checkout; that file and the logs
# are copied to $OUT (default ./gpu-out).
#
# What it needs, all optional:
#   WHEELS=DIR      wheels to install first (e.g. `higher`, for the authors' row of step_cost;
#                   matplotlib for device_check's `l2b report`), installed into a temporary
#                   directory of this script's own, never site-wide;
#   DIGITS_NPZ=F    digits as an npz (x_train, y_train, x_test, y_test) for device_check where
#                   scikit-learn, which bundles digits, is not installed;
#   GRID_SECONDS=N  after the checklist, spend what is left of N seconds on the memorisation
#                   grid's settings in $GRID_NOISES (--device cuda, $GRID_JOBS workers) and pack
#                   the runs into $OUT/grid.tgz;
#   FM_DIR=DIR      Fashion-MNIST's IDX files for the grid (default: the Debian package's path).
# It writes only under this checkout, $OUT and its temporary directory (removed at exit), and
# stops only the processes it started.
set -u
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1
if [ -n "${WHEELS:-}" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$TMP/site" "$WHEELS"/*.whl \
    && export PYTHONPATH=$PYTHONPATH:$TMP/site
fi
nvidia-smi -L; python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"
step() { local t=$1; shift; echo "== $* (limit ${t}s)"; local s=$SECONDS; timeout "$t" "$@" 2>&1 | tee -a "$OUT/checklist.log"; echo "== took $((SECONDS - s))s"; }
step 150 python3 benchmarks/gpu_epoch.py
step 100 python3 benchmarks/gpu_epoch.py --bf16
step 100 python3 benchmarks/bf16_agreement.py
step 130 python3 benchmarks/step_cost.py --device cuda --widths 64
digits=digits
python3 -c "import sklearn" 2>/dev/null || digits=npz:${DIGITS_NPZ:-none}
step 400 python3 benchmarks/device_check.py --device cuda --data "$digits"
cp benchmarks/RESULTS.md "$OUT/RESULTS.md"; cp benchmarks/results/device-check.json "$OUT/" 2>/dev/null
left=$(( ${GRID_SECONDS:-0} - SECONDS ))
if [ "$left" -gt 60 ]; then
  data=fashion-mnist${FM_DIR:+:$FM_DIR}
  echo "== grid for ${left}s: ${GRID_NOISES:-all noise settings} ($data)"
  # its own process group, so that the pool's workers stop with it, and nothing else does
  setsid python3 benchmarks/memorisation.py --device cuda --data "$data" --jobs "${GRID_JOBS:-12}" \
    ${GRID_NOISES:+--noises "$GRID_NOISES"} > "$OUT/grid.log" 2>&1 &
  pid=$!
  sleep "$left" & waiter=$!
  while kill -0 "$pid" 2>/dev/null && kill -0 "$waiter" 2>/dev/null; do sleep 2; done
  kill -- -"$pid" 2>/dev/null; kill "$waiter" 2>/dev/null; wait 2>/dev/null
  tar czf "$OUT/grid.tgz" --exclude='*ce-clean-only*' runs/bench-memorisation runs/bench-memorisation-variants 2>/dev/null
  grep -c "^\[" "$OUT/grid.log"; tail -3 "$OUT/grid.log"
fi
