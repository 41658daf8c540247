#!/usr/bin/env bash
# The GPU checklist, as one command on a lent CUDA machine (see README "Performance"):
#   epoch time of CE / L2RW / L2B (fp32 and bf16), bf16-vs-fp32 meta-weight agreement, step cost.
# Each step appends its table to benchmarks/RESULTS.md there; the file and the logs are copied to
# $OUT (or ./gpu-out). With GRID_SECONDS > 0 it then spends what is left of that many seconds on
# the memorisation grid's settings in $GRID_NOISES on the GPU and packs the runs into grid.tgz.
# Needs Fashion-MNIST at /usr/share/datasets/fashion-mnist (or in .fm/) for the grid, and
# `higher` (wheel in .whl/) for the authors' row of step_cost.
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
nvidia-smi -L; python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"
step() { local t=$1; shift; echo "== $* (limit ${t}s)"; local s=$SECONDS; timeout "$t" "$@" 2>&1 | tee -a "$OUT/checklist.log"; echo "== took $((SECONDS - s))s"; }
step 150 python3 benchmarks/gpu_epoch.py
step 100 python3 benchmarks/gpu_epoch.py --bf16
step 100 python3 benchmarks/bf16_agreement.py
step 130 python3 benchmarks/step_cost.py --device cuda --widths 64
cp benchmarks/RESULTS.md "$OUT/RESULTS.md"
left=$(( ${GRID_SECONDS:-0} - SECONDS ))
if [ "$left" -gt 60 ]; then
  if [ -d .fm ] && [ ! -d /usr/share/datasets/fashion-mnist ]; then mkdir -p /usr/share/datasets && cp -r .fm /usr/share/datasets/fashion-mnist; fi
  echo "== grid for ${left}s: $GRID_NOISES"
  timeout -k 5 "$left" python3 benchmarks/memorisation.py --device cuda --jobs "${GRID_JOBS:-12}" --noises "$GRID_NOISES" > "$OUT/grid.log" 2>&1
  pkill -9 -f memorisation.py; pkill -9 -f multiprocessing; sleep 1
  tar czf "$OUT/grid.tgz" --exclude='*ce-clean-only*' runs/bench-memorisation runs/bench-memorisation-variants 2>/dev/null
  grep -c "^\[" "$OUT/grid.log"; tail -3 "$OUT/grid.log"
fi
