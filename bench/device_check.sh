#!/usr/bin/env bash
# One-shot GPU check for a session lent an H100/H200 (see /work/shared/device/README.md and docs/performance.md).
#
# Here, once (needs the package registry):  echo /.whl/ >> .git/info/exclude; bash ../shared/device/wheels.sh
# Then one device call, carrying the wheels (about 6-8 minutes; leaves time to rerun within 15):
#   run(command="bash bench/device_check.sh", carry=[".whl"], timeout_s=580)
# Results come back under $OUT: gpu_smoke.json (CUDA labels against CPU labels, Dice per task),
# latency_cuda.json (bench.latency on CUDA, with fine-tuning throughput on the paper's 96^3 patches),
# latency_cpu.json (the same tasks with device=cpu on that machine), logs, and summary.txt.
set -u
OUT=${OUT:-/tmp/device-check}; mkdir -p "$OUT"
STEP_S=${STEP_S:-160}   # per step; a step that runs over is killed and the next one runs
RUNS=${RUNS:-10}
log() { echo "== $(date +%T) $*" | tee -a "$OUT/summary.txt"; }

# MONAI Label and friends from the carried wheels; a .pth puts them first on sys.path for every python3
# (the server subprocess gets PYTHONPATH=lib from mslesion.dev.serverproc, so PYTHONPATH alone would not reach it).
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { log "wheel install failed"; exit 1; }
  SITE_DIR=$(python3 -c 'import site; print(site.getusersitepackages() if site.ENABLE_USER_SITE else site.getsitepackages()[0])')
  mkdir -p "$SITE_DIR" && echo 'import sys; sys.path.insert(0, "/tmp/site")' > "$SITE_DIR/000-msapp-wheels.pth" \
    || { log "cannot write a .pth into $SITE_DIR"; exit 1; }
fi
export PYTHONPATH=lib:.
python3 -c 'import monai, monailabel, nibabel, torch; print("monai", monai.__version__, "monailabel", monailabel.__version__, "torch", torch.__version__, "cuda", torch.cuda.is_available())' 2>&1 | tee -a "$OUT/summary.txt" || exit 1
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv | tee -a "$OUT/summary.txt"
# the GPU path must not need SimpleITK or ITK at import time (the carried stand-ins raise on real use)
python3 -c 'import mslesion.tasks, mslesion.registration, mslesion.unet.inference, mslesion.studycache; print("mslesion imports: ok")' 2>&1 | tee -a "$OUT/summary.txt"

PH=/tmp/msapp-phantoms; rm -rf "$PH"
log "0. phantom studies (one MS subject, two sessions, four sequences), written once"
timeout 120 python3 -m bench.latency --write-studies "$PH" > "$OUT/phantoms.log" 2>&1 || { log "phantoms failed"; exit 1; }

log "1. GPU smoke: every task on cuda and on cpu, labels compared"
timeout "$STEP_S" python3 -m bench.gpu_smoke --runs 3 --studies "$PH/studies" --json "$OUT/gpu_smoke.json" --workdir "$OUT/smoke" \
  > "$OUT/gpu_smoke.log" 2>&1; echo "exit $?" | tee -a "$OUT/summary.txt"
grep -E '^\S+: \{' "$OUT/gpu_smoke.log" | cut -c1-400 | tee -a "$OUT/summary.txt"

log "2. bench.latency on CUDA ($RUNS runs) + fine-tuning throughput (paper schedule: 96^3 patches)"
timeout "$STEP_S" python3 -m bench.latency --runs "$RUNS" --train-schedule paper --studies "$PH/studies" --truth "$PH/truth" \
  --json "$OUT/latency_cuda.json" \
  --workdir "$OUT/latency_cuda" > "$OUT/latency_cuda.log" 2>&1; echo "exit $?" | tee -a "$OUT/summary.txt"
grep -E '^(flair_lesion|new_lesion|enhancement|enhancement_prediction|training):' "$OUT/latency_cuda.log" \
  | tee -a "$OUT/summary.txt"

log "3. bench.latency with device=cpu on the same machine (3 runs, no training)"
timeout "$STEP_S" python3 -m bench.latency --runs 3 --device cpu --no-train --studies "$PH/studies" --json "$OUT/latency_cpu.json" \
  --workdir "$OUT/latency_cpu" > "$OUT/latency_cpu.log" 2>&1; echo "exit $?" | tee -a "$OUT/summary.txt"
grep -E '^(flair_lesion|new_lesion|enhancement|enhancement_prediction):' "$OUT/latency_cpu.log" \
  | tee -a "$OUT/summary.txt"

# keep what comes back small: server logs tails only, no studies or weights
find "$OUT" -name '*.nii.gz' -delete; find "$OUT" -name '*.pt' -delete
for f in $(find "$OUT" -name server.log); do tail -c 200000 "$f" > "$f.tail"; rm -f "$f"; done
log "done"
