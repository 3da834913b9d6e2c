#!/usr/bin/env bash
# benchmarks/gpu_run.sh OUTDIR [--dry-run] [options]: every GPU figure of hfkernels in one call.
#
# Steps, in order, each under its own time limit (`timeout`), with its status and log recorded;
# a step that cannot run says why and the run goes on, so one call never wastes GPU time:
#   env            the card (nvidia-smi, torch), versions, DRAM bandwidth, a measured copy
#   data           the image sets under the data root, with pair counts
#   build          the extension with CUDA (HFK_CUDA=1, TORCH_CUDA_ARCH_LIST = the card's)
#   tests          the GPU test subset: every backend against the reference on CUDA
#                  (fp32/bf16, gradchecks where they apply): the tests whose ids name cuda or
#                  triton (the device-parametrised ones pick up cuda by themselves)
#   bench-kernels  fuse / pyramid / collapse at (16,1,480,640) fp32 and bf16, bandwidth vs peak
#   bench-losses   SSIM, gradient-max, FusionLoss at (16,3,480,640)
#   bench-tables   the paper's Tables 5 and 9 (the trainer vs the trainer on `torch`)
#   train          `hfkernels train --preset paper --epochs 2` on MSRS train, RoadScene, TNO
#   eval           the trained run zero-shot on MSRS test and Harvard CT/PET/SPECT-MRI, native size
#   resources      benchmarks/resources.py (registers, spills, occupancy), if present
#   video          benchmarks/video_fps.py on the GPU: streaming video fusion against frame-by-frame
#                  fuse_color, decode/encode included (M3SVD under the data root, else a made-up
#                  640x480 clip); skipped without PyAV
# Everything lands in OUTDIR: SUMMARY.md (card name first), summary.json, env.json,
# steps.jsonl, logs/, tests/junit.xml, bench/*.json|md, train/, eval/*.json, resources/.
# The trained run's checkpoints stay in OUTDIR/work (large; left out of the bundle).
#
# --dry-run: runs on any machine without a GPU; every step that needs one says so and is
# skipped, the rest (arguments, env, data, the summary writer, the bundle) runs.
#
# Options:
#   --data DIR       image root (default: $HFK_DATA, else out/gpu-data in this checkout, else
#                    the package's default data root); train/eval are skipped without one
#   --bundle DIR     after every step, copy SUMMARY.md, summary.json and gpu-run.tar.gz (all of
#                    OUTDIR but work/) into DIR: three files, whatever kills the run later
#   --budget SEC     total time for all steps (default 460); each step gets at most the time left
#   --only A,B / --skip A,B   run only / leave out these steps (a rerun into the same OUTDIR
#                    replaces those steps' records and keeps the others)
#   env PYTHON       the interpreter (default python3)
#
# On this workplace's GPU machine (device tool `run`: 15 minutes of device time per task,
# machine start included; the machine receives only the repository, so a data folder outside
# the checkout does not travel and the images must be carried, within 64 MiB with the checkout):
#   once, here:   python benchmarks/gpu_data.py pack out/gpu-data      # <= 56 MiB, git-ignored
#   the call:     run(command="bash benchmarks/gpu_run.sh /tmp/gpu-run --bundle $OUT",
#                     carry=["out/gpu-data"], timeout_s=540)
# The script ends within --budget (460 s: each step's limit keeps back the kill grace of a step
# that overruns and the last summary); timeout_s=540 is a backstop. With the machine's start
# (1-2 min) and the transfer the call takes about 10 of the 15 minutes. Its files come back from
# $OUT: SUMMARY.md, summary.json, gpu-run.tar.gz. To rerun a step in the time left:
# --only STEP,... --budget SECONDS (a machine that was given back starts bare: add build).
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
PY=${PYTHON:-python3}

STEPS=(env data build tests bench-kernels bench-losses bench-tables train eval resources video)
# seconds each step may take at most (the run's --budget caps the sum)
declare -A STEP_BUDGET=([env]=60 [data]=30 [build]=240 [tests]=150 [bench-kernels]=90 [bench-losses]=90
                        [bench-tables]=120 [train]=150 [eval]=150 [resources]=90 [video]=90)
# steps that need a CUDA GPU (skipped in a dry run and where none is visible)
declare -A NEEDS_GPU=([build]=1 [tests]=1 [bench-kernels]=1 [bench-losses]=1 [bench-tables]=1 [train]=1
                      [eval]=1 [resources]=1 [video]=1)
declare -A STEP_CMD=(
  [env]="python benchmarks/gpu_summary.py env OUTDIR [--measure]"
  [data]="python benchmarks/gpu_data.py check DATA --json OUTDIR/data.json"
  [build]="HFK_CUDA=1 TORCH_CUDA_ARCH_LIST=<card> pip install --no-build-isolation --no-deps --no-index -e ."
  [tests]="pytest tests -k '(cuda or triton) and not nvcc' --junitxml OUTDIR/tests/junit.xml"
  [bench-kernels]="pytest benchmarks/test_kernels.py -k cuda --hfk-targets=report --benchmark-json OUTDIR/bench/kernels.json"
  [bench-losses]="pytest benchmarks/test_losses.py -k cuda --hfk-targets=report --benchmark-json OUTDIR/bench/losses.json"
  [bench-tables]="pytest benchmarks/test_paper_tables.py --hfk-targets=report --benchmark-json OUTDIR/bench/tables.json"
  [train]="hfkernels train --data MSRS/train --data RoadScene --data TNO --preset paper --epochs 2"
  [eval]="hfkernels eval --checkpoint RUN --vis SET/vi --ir SET/ir --json OUTDIR/eval/SET.json (MSRS test, Harvard x3)"
  [resources]="python benchmarks/resources.py --json OUTDIR/resources/resources.json"
  [video]="python benchmarks/video_fps.py --device cuda [--synthetic 40] --json OUTDIR/video/video.json --md OUTDIR/video/video.md"
)
RESERVE=25   # seconds kept for a step's kill grace beyond its limit, the last summary and bundle
KILL_GRACE=20  # after TERM at a step's limit, KILL after this many seconds

usage() {
  sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}
die() { echo "gpu_run.sh: $*" >&2; echo "usage: benchmarks/gpu_run.sh OUTDIR [--dry-run] [--data DIR] [--bundle DIR] [--budget SEC] [--only A,B] [--skip A,B]" >&2; exit 2; }

is_step() { local s; for s in "${STEPS[@]}"; do [[ $s == "$1" ]] && return 0; done; return 1; }
check_steps() {  # $1: option name, $2: comma list
  local s
  [[ -n $2 ]] || die "$1 needs a comma-separated list of steps"
  for s in ${2//,/ }; do is_step "$s" || die "$1: unknown step '$s' (steps: ${STEPS[*]})"; done
}

OUTDIR="" DRY_RUN=0 DATA="" DATA_GIVEN=0 BUNDLE="" BUDGET=460 ONLY="" SKIP=""
while (($#)); do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1 ;;
    --data) (($# > 1)) || die "--data needs a folder"; DATA=$2; DATA_GIVEN=1; shift ;;
    --bundle) (($# > 1)) || die "--bundle needs a folder"; BUNDLE=$2; shift ;;
    --budget) (($# > 1)) || die "--budget needs seconds"; BUDGET=$2; shift
              [[ $BUDGET =~ ^[0-9]+$ ]] && ((BUDGET >= 30)) || die "--budget must be a whole number of seconds >= 30, got '$BUDGET'" ;;
    --only) (($# > 1)) || die "--only needs a list"; check_steps --only "$2"; ONLY=",$2,"; shift ;;
    --skip) (($# > 1)) || die "--skip needs a list"; check_steps --skip "$2"; SKIP=",$2,"; shift ;;
    -*) die "unknown option '$1'" ;;
    *) [[ -z $OUTDIR ]] || die "one OUTDIR only (got '$OUTDIR' and '$1')"; OUTDIR=$1 ;;
  esac
  shift
done
[[ -n $OUTDIR ]] || die "OUTDIR is required"
command -v "$PY" >/dev/null || die "python interpreter '$PY' not found (set PYTHON)"
mkdir -p "$OUTDIR"/logs || die "cannot create OUTDIR '$OUTDIR'"
OUTDIR=$(cd "$OUTDIR" && pwd)
if [[ -n $BUNDLE ]]; then
  mkdir -p "$BUNDLE" || die "cannot create --bundle folder '$BUNDLE'"
  BUNDLE=$(cd "$BUNDLE" && pwd)
  [[ $BUNDLE/ != "$OUTDIR"/* ]] || die "--bundle must be outside OUTDIR (it holds a copy of OUTDIR)"
fi
if ((DATA_GIVEN)); then
  [[ -d $DATA ]] || DATA=""   # reported by the data step
elif [[ -n ${HFK_DATA:-} && -d $HFK_DATA ]]; then DATA=$HFK_DATA
elif [[ -d $ROOT/out/gpu-data ]]; then DATA=$ROOT/out/gpu-data
else DATA=$(cd "$ROOT" && "$PY" -c "from hfkernels.io import data_root; print(data_root() or '')" 2>/dev/null)
fi
[[ -z $DATA ]] || DATA=$(cd "$DATA" && pwd)
JOBS=$(nproc 2>/dev/null || echo 4)
START=$(date +%s)
export ROOT HERE PY OUTDIR DATA DRY_RUN JOBS PYTHONUNBUFFERED=1
# a checkout whose install failed still imports (pure-Python backends), so later steps run
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
cd "$ROOT" || exit 2

"$PY" - "$OUTDIR/run.json" "$DRY_RUN" "$BUDGET" "$DATA" "${STEPS[*]}" <<'EOF' || die "cannot write $OUTDIR/run.json"
import datetime, json, sys
path, dry, budget, data, steps = sys.argv[1:]
json.dump({"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "dry_run": dry == "1", "budget_s": int(budget), "data_root": data or None,
           "steps": steps.split()}, open(path, "w"))
EOF

# ---------------------------------------------------------------------------------------------
# Steps: each runs as `bash -c step_NAME` under `timeout` (so a kill takes its whole process
# group); `skip REASON` ends one as skipped.

skip() { echo "$*" >"$SKIP_FILE"; exit 0; }
# pytest under `timeout`: TERM becomes KeyboardInterrupt, so pytest still writes its
# --benchmark-json / --junitxml with what finished
pytest_() {
  "$PY" -c 'import signal, sys, pytest
signal.signal(signal.SIGTERM, signal.default_int_handler)
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.exit(pytest.main(sys.argv[1:]))' "$@"
}
jget() { "$PY" "$HERE/gpu_summary.py" get "$1" "$2"; }

step_env() {
  local m=()
  ((DRY_RUN)) || m=(--measure)
  "$PY" "$HERE/gpu_summary.py" env "$OUTDIR" ${m[@]+"${m[@]}"}
}

step_data() {
  [[ -n $DATA ]] || skip "no data root: give --data DIR or set HFK_DATA (see benchmarks/gpu_data.py pack)"
  "$PY" "$HERE/gpu_data.py" check "$DATA" --json "$OUTDIR/data.json"
}

step_build() {
  if ! "$PY" -c "import torch" 2>/dev/null; then
    echo "torch is not importable: installing it"
    if compgen -G "$ROOT/.whl/torch-*.whl" >/dev/null; then
      "$PY" -m pip install -q --no-index --find-links "$ROOT/.whl" torch || exit 1
    else
      "$PY" -m pip install -q --retries 0 --timeout 15 torch \
        || { echo "torch could not be installed: no package index reachable and no torch wheel in .whl/"; exit 1; }
    fi
  fi
  "$PY" -c "import torch, sys; sys.exit(0 if torch.version.cuda else 'torch ' + torch.__version__ + ' is a CPU-only build')" || exit 1
  if ! command -v nvcc >/dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then export PATH=/usr/local/cuda/bin:$PATH; fi
  command -v nvcc >/dev/null || { echo "nvcc not found (PATH, /usr/local/cuda/bin): the CUDA extension cannot be built"; exit 1; }
  local arch=${TORCH_CUDA_ARCH_LIST:-$(jget "$OUTDIR/env.json" gpu.capability)}
  [[ -n $arch ]] || { echo "the card's compute capability is unknown (env step): set TORCH_CUDA_ARCH_LIST"; exit 1; }
  echo "+ HFK_CUDA=1 TORCH_CUDA_ARCH_LIST=$arch MAX_JOBS=$JOBS $PY -m pip install --no-build-isolation --no-deps --no-index -e ."
  HFK_CUDA=1 TORCH_CUDA_ARCH_LIST=$arch MAX_JOBS=$JOBS \
    "$PY" -m pip install --no-build-isolation --no-deps --no-index -e . || exit 1
  "$PY" -m hfkernels info
  "$PY" "$HERE/gpu_summary.py" backends "$OUTDIR/backends.json"
}

step_tests() {
  mkdir -p "$OUTDIR/tests"
  local xd=()
  # Triton compiles on the CPU: spread the test files over a few processes
  if "$PY" -c "import xdist" 2>/dev/null; then xd=(-n "$((JOBS < 8 ? JOBS : 8))"); fi
  # the nvcc compile checks are left out: the build step compiled every .cu already
  pytest_ tests -q -p no:cacheprovider -k "(cuda or triton) and not nvcc" \
    --junitxml "$OUTDIR/tests/junit.xml" ${xd[@]+"${xd[@]}"}
}

bench() {  # bench NAME PYTEST-ARGS...: one benchmark file into OUTDIR/bench/NAME.{json,md}
  local name=$1 rc
  shift
  mkdir -p "$OUTDIR/bench"
  pytest_ "$@" -q -p no:cacheprovider --hfk-targets=report --benchmark-json "$OUTDIR/bench/$name.json"
  rc=$?
  if [[ -s $OUTDIR/bench/$name.json ]]; then
    "$PY" -m hfkernels bench "$OUTDIR/bench/$name.json" --format markdown >"$OUTDIR/bench/$name.md" \
      || rm -f "$OUTDIR/bench/$name.md"
  fi
  exit $rc
}
step_bench-kernels() { bench kernels benchmarks/test_kernels.py -k cuda; }
step_bench-losses() { bench losses benchmarks/test_losses.py -k cuda; }
step_bench-tables() { bench tables benchmarks/test_paper_tables.py; }

step_train() {
  [[ -n $DATA ]] || skip "no data root: give --data DIR or set HFK_DATA"
  local sets args=() s
  mapfile -t sets < <("$PY" "$HERE/gpu_data.py" args "$DATA" train)
  ((${#sets[@]})) || skip "no training set under $DATA (looked for MSRS/train, RoadScene, TNO)"
  for s in "${sets[@]}"; do args+=(--data "$s"); done
  "$PY" -m hfkernels train "${args[@]}" --preset paper --epochs 2 --out "$OUTDIR/work/run" --overwrite \
    --no-baseline --no-progress
}

step_eval() {
  [[ -n $DATA ]] || skip "no data root: give --data DIR or set HFK_DATA"
  local run=$OUTDIR/work/run sets line name vis ir fail=0 left per i=0 rc
  compgen -G "$run/*.safetensors" >/dev/null || skip "no trained run in $run (the train step did not finish an epoch)"
  mapfile -t sets < <("$PY" "$HERE/gpu_data.py" args "$DATA" eval)
  ((${#sets[@]})) || skip "no evaluation set under $DATA (looked for MSRS/test, Harvard/*-MRI)"
  mkdir -p "$OUTDIR/eval"
  for line in "${sets[@]}"; do
    IFS=$'\t' read -r name vis ir <<<"$line"
    # the step's time is shared by the sets still to go
    left=$((STEP_END - $(date +%s)))
    per=$((left / (${#sets[@]} - i)))
    i=$((i + 1))
    if ((per < 5)); then echo "eval $name: skipped, out of time"; fail=1; continue; fi
    echo "+ eval $name (at most $per s)"
    rm -f "$OUTDIR/eval/$name.json"   # a rerun's figures replace the last ones
    # --foreground keeps the process in this step's group, so the step's own limit reaches it
    timeout --foreground -s TERM -k 5 "$per" "$PY" -m hfkernels eval --checkpoint "$run" --vis "$vis" \
      --ir "$ir" --json "$OUTDIR/eval/$name.json" --quiet
    rc=$?
    ((rc == 0)) || { echo "eval $name: failed (exit $rc$( ((rc == 124)) && echo ', out of time'))"; fail=1; }
  done
  exit $fail
}

step_resources() {
  [[ -f $ROOT/benchmarks/resources.py ]] || skip "benchmarks/resources.py is not in this checkout"
  mkdir -p "$OUTDIR/resources"
  "$PY" "$ROOT/benchmarks/resources.py" --json "$OUTDIR/resources/resources.json" >"$OUTDIR/resources/resources.md"
}

step_video() {
  "$PY" -c "import av" 2>/dev/null || skip "PyAV is not installed (pip install av): no video files"
  local src=()
  if [[ -z $DATA || ! -d $DATA/M3SVD ]]; then src=(--synthetic 40); echo "no M3SVD under the data root: a made-up clip"; fi
  mkdir -p "$OUTDIR/video"
  HFK_DATA=$DATA "$PY" "$HERE/video_fps.py" --device cuda ${src[@]+"${src[@]}"} --json "$OUTDIR/video/video.json" \
    --md "$OUTDIR/video/video.md"
}

export -f skip pytest_ jget bench "${STEPS[@]/#/step_}"

# ---------------------------------------------------------------------------------------------
# The runner

HAVE_GPU=0 NO_GPU_WHY="the env step did not record the device"
FAILED=0

selected() {
  [[ -z $ONLY || $ONLY == *",$1,"* ]] && [[ $SKIP != *",$1,"* ]]
}

summarize() {
  "$PY" "$HERE/gpu_summary.py" write "$OUTDIR" >/dev/null || echo "gpu_run.sh: the summary could not be written" >&2
  [[ -n $BUNDLE ]] || return 0
  cp -f "$OUTDIR/SUMMARY.md" "$OUTDIR/summary.json" "$BUNDLE/" 2>/dev/null
  tar -czf "$BUNDLE/gpu-run.tar.gz.part" -C "$OUTDIR" --exclude=./work . 2>/dev/null \
    && mv -f "$BUNDLE/gpu-run.tar.gz.part" "$BUNDLE/gpu-run.tar.gz"
}

record() {  # record STEP STATUS SECONDS RC REASON [LOG]
  "$PY" "$HERE/gpu_summary.py" record "$OUTDIR" --step "$1" --status "$2" --seconds "$3" \
    --budget "${STEP_BUDGET[$1]}" --rc "$4" --reason "$5" --log "${6:-}" --cmd "${STEP_CMD[$1]}"
  printf '[%4ds] %-14s %-8s %s\n' "$(($(date +%s) - START))" "$1" "$2" "$5"
}

run_step() {
  local name=$1 reason="" t0 rc status left limit
  selected "$name" || return 0
  if [[ -n ${NEEDS_GPU[$name]:-} ]]; then
    if ((DRY_RUN)); then reason="needs a CUDA GPU: dry run (would run: ${STEP_CMD[$name]})"
    elif ((!HAVE_GPU)); then reason="needs a CUDA GPU: none visible ($NO_GPU_WHY)"
    fi
  fi
  left=$((START + BUDGET - RESERVE - $(date +%s)))
  if [[ -z $reason ]] && ((left < 10)); then reason="out of time: the run's --budget of $BUDGET s is spent"; fi
  if [[ -n $reason ]]; then
    record "$name" skipped 0 0 "$reason"
    summarize
    return 0
  fi
  limit=${STEP_BUDGET[$name]}
  ((limit <= left)) || limit=$left
  export SKIP_FILE="$OUTDIR/logs/.$name.skip" STEP_END=$(($(date +%s) + limit))
  rm -f "$SKIP_FILE"
  t0=$(date +%s.%N)
  { echo "# step $name, at most $limit s, $(date -u +%FT%TZ)"
    # the step's shell outlives TERM (a trapped signal waits for the running command), so the
    # step ends only when what it runs has written its partial results
    timeout -s TERM -k "$KILL_GRACE" "$limit" bash -c "trap : TERM; step_$name"; } >"$OUTDIR/logs/$name.log" 2>&1
  rc=$?
  local secs
  secs=$("$PY" -c "import sys, time; print(round(time.time() - float(sys.argv[1]), 1))" "$t0")
  if [[ -s $SKIP_FILE ]]; then
    record "$name" skipped "$secs" "$rc" "$(cat "$SKIP_FILE")" "logs/$name.log"
  elif ((rc == 0)); then
    record "$name" ok "$secs" 0 "" "logs/$name.log"
  elif ((rc == 124 || rc == 137)); then
    record "$name" timeout "$secs" "$rc" "stopped at its limit of $limit s" "logs/$name.log"
    FAILED=1
  else
    record "$name" failed "$secs" "$rc" "exit status $rc" "logs/$name.log"
    FAILED=1
  fi
  rm -f "$SKIP_FILE"
  summarize
}

echo "gpu_run.sh: OUTDIR $OUTDIR, budget $BUDGET s$( ((DRY_RUN)) && echo ', dry run'), data ${DATA:-none}"
for step in "${STEPS[@]}"; do
  run_step "$step"
  if [[ $step == env && -s $OUTDIR/env.json ]]; then
    [[ $(jget "$OUTDIR/env.json" has_gpu) == 1 ]] && HAVE_GPU=1
    NO_GPU_WHY=$(jget "$OUTDIR/env.json" no_gpu_why)
  fi
  if [[ $step == train ]]; then
    # the run's small records travel with the summary; its checkpoints stay in work/
    for f in history.json config.json; do
      [[ -f $OUTDIR/work/run/$f ]] && mkdir -p "$OUTDIR/train" && cp -f "$OUTDIR/work/run/$f" "$OUTDIR/train/"
    done
  fi
done
summarize
echo "gpu_run.sh: $OUTDIR/SUMMARY.md written after $(($(date +%s) - START)) s"
exit $FAILED
