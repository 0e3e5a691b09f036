#!/usr/bin/env bash
# The study on an offline GPU node, from a checkout of this repository and a bundle made by `make gpu-bundle`:
#
#     scripts/gpu_study.sh BUNDLE_DIR [PROFILE]     # PROFILE: full (default), quick, smoke or a YAML file
#
# One line per step, with its time: a virtual environment over the node's Python (--system-site-packages keeps its
# CUDA torch), the bundle's wheels installed offline (pip --no-index --no-deps), the Jupyter kernel `python3`
# registered inside it (papermill runs that kernel), `pytest -m gpu`, the throughput benchmark (a small CPU mode
# where no GPU is visible), then `darl-study report` with the profile, its backbone the bundle's MiniLM and its
# data the bundle's train.csv.gz (smoke keeps its own tiny model and synthetic pairs).
#
# What comes back is one archive of at most 16 MiB, darl-gpu-NAME.tar.gz (NAME: smoke, or the profile's name with
# -node), in $OUT if set, else in the work folder: the HTML pages and index.html, the results (JSON lines and run
# records), the benchmark's JSON lines, the logs and the UMAP inputs, which `darl-study umap` draws afterwards
# (umap-learn is not on the node).
# A failed step is logged, the steps that can still run do, the archive is packed whatever happened, and the exit
# status is then 1.
#
# Environment: PYTHON (the node's Python, default python3), DARL_WORK (work folder, default gpu-run in the
# checkout), DARL_TIME_LIMIT (seconds for the whole script, default 570 for a 10-minute job: a step still running
# is stopped in time to pack; 0: no limit), THROUGHPUT_ARGS (the benchmark's options on a GPU, default --steps 64),
# TRAIN_STEP_MODES (the compile modes benchmarks/train_step.py times; default off default reduce-overhead),
# DARL_STEPS (which of report, gpu-tests and benchmark run, in the order named; default all three in that order:
# the study first, and the gpu tests then run beside it),
# DARL_COMPILE (the report's `compile` setting, off, default or reduce-overhead; unset: the profile's, off in full),
# DARL_FIRST (the report's notebooks that run before the others, default 05_evaluation: it trains nearly every
# model and gives the main table and every verdict, and the other notebooks then find their runs in the cache),
# DARL_JOBS (the report's --jobs: processes training at once on the node, the notebooks' and DARL_JOBS - 1
# workers; default 3 where a CUDA GPU is visible, which ran the full report in 365 s on one H200, else 1).
#
# A rerun in the same work folder resumes: the cache and the report's finished notebooks are kept, so a report
# stopped at the time limit goes on where it stopped, and then the steps after it run (the same command twice
# does the whole job in two 10-minute jobs).
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 ]]; then
  echo "usage: $0 BUNDLE_DIR [PROFILE]   (PROFILE: full, quick, smoke or a YAML file; default full)" >&2
  exit 2
fi
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUNDLE=$(cd "$1" && pwd)
PROFILE=${2:-full}
PYTHON=${PYTHON:-python3}
LIMIT=${DARL_TIME_LIMIT:-570}
DARL_FIRST=${DARL_FIRST-05_evaluation}  # the report's notebooks run first ("" : none): the main table first
ALL_STEPS="report gpu-tests benchmark"
STEPS=$(tr -s '[:space:]' ' ' <<<"${DARL_STEPS:-$ALL_STEPS}")  # one space between names
PACK_SECONDS=30  # kept for packing when there is a time limit
ARCHIVE_LIMIT=$((16 * 1024 * 1024))
STARTED=$(date +%s)
seen=" "
for wanted in $STEPS; do
  if [[ ! " $ALL_STEPS " == *" $wanted "* ]]; then
    echo "error: DARL_STEPS: unknown step '$wanted'; the steps are $ALL_STEPS" >&2
    exit 2
  fi
  if [[ $seen == *" $wanted "* ]]; then
    echo "error: DARL_STEPS: step '$wanted' named twice" >&2
    exit 2
  fi
  seen+="$wanted "
done
case ${DARL_COMPILE:-} in
  ""|off|default|reduce-overhead) ;;
  *) echo "error: DARL_COMPILE: '$DARL_COMPILE' is not one of off, default, reduce-overhead" >&2; exit 2 ;;
esac
if [[ -n ${DARL_COMPILE:-} && $(basename "${PROFILE%.y*ml}") == smoke ]]; then
  echo "error: DARL_COMPILE: the smoke profile runs as it ships; set compile in a copy of it under another name" >&2
  exit 2
fi
JOBS=${DARL_JOBS:-auto}  # auto: 3 with a CUDA GPU, else 1, decided once the venv can import torch (jobs_wanted)
if [[ $JOBS != auto ]] && { ! [[ $JOBS =~ ^[1-9][0-9]?$ ]] || (( JOBS > 64 )); }; then
  echo "error: DARL_JOBS: '$JOBS' is not a number of processes from 1 to 64 (report --jobs), nor auto" >&2
  exit 2
fi
if [[ ! -f $BUNDLE/MANIFEST.json ]]; then
  echo "error: $BUNDLE is not a bundle (no MANIFEST.json); build one with make gpu-bundle" >&2
  exit 2
fi
mkdir -p "${DARL_WORK:-$ROOT/gpu-run}"
WORK=$(cd "${DARL_WORK:-$ROOT/gpu-run}" && pwd)
VENV=$WORK/venv
PY=$VENV/bin/python
LOGS=$WORK/logs
DEST=${OUT:-$WORK}
NAME=$(basename "$PROFILE")
NAME=${NAME%.yaml}
NAME=${NAME%.yml}
[[ $NAME == smoke ]] || NAME=$NAME-node
rm -rf "$WORK/umap"
mkdir -p "$LOGS" "$DEST"
# a rerun keeps the logs of the steps it does not run (DARL_STEPS), which its archive brings back again
rm -f "$LOGS/steps.txt"
for s in venv install kernel $STEPS; do rm -f "$LOGS/$s.log" "$LOGS/$s.xml"; done

export DARL_CACHE=$WORK/cache DARL_DATA=$BUNDLE/data/train.csv.gz DARL_MINILM=$BUNDLE/minilm
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# the kernel registered in the venv wins over any python3 kernel of the user's own (~/.local/share/jupyter)
export JUPYTER_PATH=$VENV/share/jupyter JUPYTER_PLATFORM_DIRS=1

declare -A STATUS=()
FAILED=0

# step NAME FUNCTION: runs it (errexit on) with its output in logs/NAME.log; one line with its status and time
step() {
  local name=$1 t0 rc
  shift
  t0=$(date +%s)
  set +e
  ( set -e; "$@" ) >"$LOGS/$name.log" 2>&1
  rc=$?
  set -e
  settle "$name" "$rc" "$t0"
}

# settle NAME RC T0 [NOTE]: a step's outcome recorded, and its line printed
settle() {
  local name=$1 rc=$2 t0=$3 note=${4:-} status
  case $rc in
    0) status=ok ;;
    124|137) status="stopped at the time limit (see logs/$name.log)" ;;
    *) status="failed, exit $rc (see logs/$name.log)" ;;
  esac
  [[ $rc == 0 ]] || FAILED=1
  STATUS[$name]=$rc
  printf '%-10s %s (%d s%s)\n' "$name:" "$status" "$(( $(date +%s) - t0 ))" "$note" | tee -a "$LOGS/steps.txt"
}

# started NAME FUNCTION / joined NAME: a step run in the background beside another, and its outcome once done
declare -A BESIDE_PID=() BESIDE_T0=()
started() {
  local name=$1
  shift
  BESIDE_T0[$name]=$(date +%s)
  ( set -e; "$@" ) >"$LOGS/$name.log" 2>&1 &
  BESIDE_PID[$name]=$!
}

joined() {
  local rc
  set +e
  wait "${BESIDE_PID[$1]}"
  rc=$?
  set -e
  settle "$1" "$rc" "${BESIDE_T0[$1]}" ", beside the report"
  unset "BESIDE_PID[$1]"
}

skip() {
  printf '%-10s skipped: %s\n' "$1:" "$2" | tee -a "$LOGS/steps.txt"
  FAILED=1
}

ok() { [[ ${STATUS[$1]:-1} == 0 ]]; }

# each of ALL_STEPS: its function, the step it needs, and what is said when that one did not go well
declare -A RUNS=([report]=report [gpu-tests]=gpu_tests [benchmark]=benchmark)
declare -A NEEDS=([report]=kernel [gpu-tests]=install [benchmark]=install)
declare -A LACKING=([report]="no kernel" [gpu-tests]="nothing installed" [benchmark]="nothing installed")

# chosen_step NAME: the step, if the step it needs went well (else the reason it cannot run)
chosen_step() {
  if ok "${NEEDS[$1]}"; then step "$1" "${RUNS[$1]}"; else skip "$1" "${LACKING[$1]}"; fi
}

# limited COMMAND...: the command, stopped in time to pack when there is a time limit
limited() {
  if (( LIMIT <= 0 )); then
    "$@"
    return
  fi
  local left=$(( STARTED + LIMIT - PACK_SECONDS - $(date +%s) ))
  if (( left <= 0 )); then
    echo "no time left before DARL_TIME_LIMIT=$LIMIT s"
    return 124
  fi
  timeout --kill-after=10 "$left" "$@"
}

make_venv() {
  local want have
  want=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["python"])' "$BUNDLE/MANIFEST.json")
  have=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  if [[ $want != "$have" ]]; then
    echo "the bundle's wheels are for Python $want, $PYTHON is $have: make gpu-bundle GPU_PYTHON=$have"
    return 1
  fi
  echo "+ $PYTHON -m venv --clear --system-site-packages $VENV"
  "$PYTHON" -m venv --clear --system-site-packages "$VENV"
  # A node Python that is itself a virtual environment: a venv made from it sees only its base's packages, so its
  # own site-packages are added after the venv's.
  "$PYTHON" - "$PY" <<'EOF'
import site, subprocess, sys
if sys.prefix != sys.base_prefix:
    target = subprocess.run([sys.argv[1], "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                            capture_output=True, text=True, check=True).stdout.strip()
    with open(f"{target}/node-python.pth", "w") as f:
        f.writelines(f"import site; site.addsitedir({p!r})\n" for p in site.getsitepackages())
    print(f"{sys.prefix} is a virtual environment: its site-packages added through node-python.pth")
EOF
  "$PY" -c 'import sys, torch; print(sys.version); print("torch", torch.__version__, "CUDA", torch.cuda.is_available())'
}

install_wheels() {
  local wheels=("$BUNDLE"/wheels/*.whl)
  echo "+ $PY -m pip install --no-index --no-deps --ignore-installed ${#wheels[@]} wheels from $BUNDLE/wheels"
  "$PY" -m pip install --no-index --no-deps --ignore-installed --disable-pip-version-check \
    --no-warn-script-location "${wheels[@]}"
  # every requirement of the bundle's packages met by the node or the bundle (darl-study's own are not meant to
  # be, nor the optional debugpy and jedi): a missing one is named, a version below the asked one is a warning
  "$PY" - "${wheels[@]}" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, distribution, version
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
import darl_utils, ipykernel, nbconvert, papermill  # noqa: F401
print(", ".join(f"{p} {version(p)}" for p in ("darl-study", "papermill", "nbconvert", "ipykernel", "torch")))
missing = []
for name in sorted({canonicalize_name(w.rsplit("/", 1)[-1].split("-")[0]) for w in sys.argv[1:]} - {"darl-study"}):
    for line in distribution(name).requires or []:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        try:
            have = version(req.name)
        except PackageNotFoundError:
            if canonicalize_name(req.name) not in ("debugpy", "jedi"):
                missing.append(f"{req.name} (for {name})")
            continue
        if req.specifier and not req.specifier.contains(have, prereleases=True):
            print(f"warning: {name} asks for {req}, the node has {req.name} {have}")
if missing:
    sys.exit(f"on neither the node nor in the bundle: {', '.join(missing)}; rebuild the bundle with "
             f"make gpu-bundle BUNDLE_ARGS='--also {' '.join(sorted({m.split()[0] for m in missing}))}'")
EOF
}

register_kernel() {
  "$PY" -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (darl-study)"
  "$PY" - <<'EOF'
import sys
from jupyter_client.kernelspec import KernelSpecManager
spec = KernelSpecManager().get_kernel_spec("python3")
print("kernel python3:", spec.argv)
if spec.argv[0] != sys.executable:
    sys.exit(f"kernel python3 runs {spec.argv[0]}, not {sys.executable}")
EOF
}

gpu_tests() {
  cd "$ROOT"
  limited "$PY" -m pytest -m gpu tests/test_gpu.py -p no:cacheprovider --junitxml "$LOGS/gpu-tests.xml"
}

# cuda_visible: whether the venv's torch sees a CUDA GPU (the benchmarks' mode and DARL_JOBS=auto depend on it)
cuda_visible() {
  "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'
}

benchmark() {
  cd "$ROOT"
  if cuda_visible; then
    # one step of the full profile's batches, eager and compiled (whose widths round up to 8: 51 -> 56): how much
    # of it the GPU is busy (host-bound or GPU-bound), and what compiling changes
    local mode
    for mode in ${TRAIN_STEP_MODES:-off default reduce-overhead}; do
      limited "$PY" benchmarks/train_step.py --backbone "$DARL_MINILM" --batch 256 --mean-tokens 25 --steps 20 \
        --tokens "$([[ $mode == off ]] && echo 51 || echo 56)" --compile "$mode" \
        || echo "train_step.py --compile $mode failed (exit $?); the benchmarks go on"
    done
    # shellcheck disable=SC2086  # THROUGHPUT_ARGS: several options
    limited "$PY" benchmarks/throughput.py --backbone "$DARL_MINILM" --data "$DARL_DATA" \
      --out-dir "$WORK/benchmarks" ${THROUGHPUT_ARGS:---steps 64}
  else
    echo "no CUDA GPU visible: the small CPU mode (a tiny random model on synthetic pairs)"
    "$PY" -c 'import sys; from darl_utils.smoke import smoke_assets; smoke_assets(sys.argv[1])' "$WORK/assets"
    limited "$PY" benchmarks/throughput.py --dataset csv --data "$WORK/assets/pairs.csv" \
      --backbone "$WORK/assets/tiny-bert" --device cpu --batch-sizes 16 --max-train-pairs 96 --max-eval-pairs 64 \
      --warmup-steps 2 --out-dir "$WORK/benchmarks" --contenders ours ours_compiled trainer
  fi
}

# jobs_wanted: DARL_JOBS, or for auto 3 on a CUDA GPU (one process leaves a GPU idle between its host-bound steps;
# docs/measurements.md) and 1 on a CPU, whose cores the kernels already use
jobs_wanted() {
  if [[ $JOBS != auto ]]; then
    echo "$JOBS"
  elif cuda_visible; then
    echo 3
  else
    echo 1
  fi
}

report() {
  cd "$ROOT"
  local profile=$PROFILE jobs
  jobs=$(jobs_wanted)
  echo "report --jobs $jobs (DARL_JOBS=${DARL_JOBS:-auto})"
  if [[ $NAME != smoke ]]; then  # the bundle's MiniLM and data, unless the profile names its own
    profile=$("$PY" - "$PROFILE" "$WORK/$NAME.yaml" <<'EOF'
import os, sys
import yaml
from darl_utils.runner import load_profile
name, spec = load_profile(sys.argv[1])
common = spec.setdefault("all", {})
for key, where in (("backbone", os.environ["DARL_MINILM"]), ("data", os.environ["DARL_DATA"])):
    if not any(key in part for part in spec.values()) and common.get("data") != "synthetic":  # a smoke copy
        common[key] = where
if os.environ.get("DARL_COMPILE"):  # every training step compiled (darl_utils/compilation.py)
    common.setdefault("settings", {})["compile"] = os.environ["DARL_COMPILE"]
with open(sys.argv[2], "w") as f:
    f.write(f"# profile {name} with the GPU bundle's MiniLM and data (written by scripts/gpu_study.sh)\n")
    yaml.safe_dump(spec, f, sort_keys=False)
print(sys.argv[2])
EOF
)
    echo "profile $profile:"
    cat "$profile"
  fi
  # shellcheck disable=SC2086  # DARL_FIRST: several notebooks
  limited "$PY" -m darl_utils report --profile "$profile" --out "$WORK/reports" --no-progress --jobs "$jobs" \
    ${DARL_FIRST:+--first $DARL_FIRST}
}

pack() {
  local archive=$DEST/darl-gpu-$NAME.tar.gz size t0
  t0=$(date +%s)
  # notebook 02's UMAP inputs (no umap-learn here), under the name of their selection folder
  local f
  while IFS= read -r f; do
    mkdir -p "$WORK/umap/$(basename "$(dirname "$f")")"
    cp "$f" "$WORK/umap/$(basename "$(dirname "$f")")/"
  done < <(find "$DARL_CACHE" -name 'umap-inputs-*.safetensors' 2>/dev/null || true)
  (
    cd "$WORK"
    find "reports/$NAME" -maxdepth 1 -type f \( -name '*.html' -o -name ledger.json \) 2>/dev/null || true
    find "reports/$NAME/results" -mindepth 2 -maxdepth 2 -type f \( -name '*.jsonl' -o -name '*.json' \) \
      -not -path '*.previous/*' 2>/dev/null || true
    find "reports/$NAME/workers" -maxdepth 1 -type f \( -name '*.jsonl' -o -name '*.log' \) 2>/dev/null || true
    find logs umap -type f 2>/dev/null || true
    find benchmarks -name '*.jsonl' 2>/dev/null || true
    [[ ! -f $NAME.yaml ]] || echo "$NAME.yaml"
  ) | sort >"$WORK/packed.txt"
  tar -czf "$archive" -C "$WORK" -T "$WORK/packed.txt"
  size=$(stat -c %s "$archive")
  if (( size > ARCHIVE_LIMIT )); then
    echo "error: $archive is $(( size / 1024 / 1024 )) MiB, over 16 MiB; its largest files:"
    tar -tvzf "$archive" | sort -k3 -n | tail -5
    tar -czf "$DEST/darl-gpu-$NAME-logs.tar.gz" -C "$WORK" logs
    echo "the logs alone: $DEST/darl-gpu-$NAME-logs.tar.gz"
    rm -f "$archive"
    FAILED=1
  fi
  printf '%-10s %s, %d files, %s bytes (%d s)\n' "pack:" "$archive" "$(wc -l <"$WORK/packed.txt")" "$size" \
    "$(( $(date +%s) - t0 ))"
}

# headers: torch.compile builds C launchers that include Python.h; where the node's Python has no headers (no
# python3-dev), the bundle's (include/pythonX.Y) serve, through the compilers' include path. One line says which,
# and which C compiler there is: without both, only `compile: off` runs here.
headers() {
  local own found compiler status
  own=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
  found=""  # a bundle built with --headers none has no include/
  [[ ! -d $BUNDLE/include ]] || found=$(find "$BUNDLE/include" -mindepth 1 -maxdepth 1 -type d | head -n 1)
  if [[ -f $own/Python.h ]]; then
    printf -v status "the node's Python's (%s)" "$own"
  elif [[ -n $found && -f $found/Python.h ]]; then
    export C_INCLUDE_PATH=$found${C_INCLUDE_PATH:+:$C_INCLUDE_PATH}
    export CPLUS_INCLUDE_PATH=$found${CPLUS_INCLUDE_PATH:+:$CPLUS_INCLUDE_PATH}
    status="the bundle's ($(basename "$found"))"
  else
    status="none (torch.compile cannot build kernels here)"
  fi
  compiler=$(command -v "${CC:-gcc}" || command -v cc || echo none)
  printf '%-10s Python.h: %s; C compiler: %s\n' "headers:" "$status" "$compiler" | tee -a "$LOGS/steps.txt"
}

trap 'echo "interrupted: packing what exists"; kill "${BESIDE_PID[@]}" 2>/dev/null || true; pack; exit 130' INT TERM

echo "darl-study on this node: bundle $BUNDLE, profile $PROFILE, work folder $WORK"
step venv make_venv
if ok venv; then step install install_wheels; else skip install "no venv"; fi
if ok venv; then headers; fi
if ok install; then step kernel register_kernel; else skip kernel "nothing installed"; fi
for s in $ALL_STEPS; do
  [[ " $STEPS " == *" $s "* ]] || printf '%-10s not run: not in DARL_STEPS\n' "$s:" | tee -a "$LOGS/steps.txt"
done
# The gpu tests (tiny models, a minute) run beside the report when both are chosen: they hardly load a node that
# the report leaves mostly idle, and the report, the study's output, keeps the job's time. The benchmarks time
# the GPU, so they run alone.
beside=""
if [[ " $STEPS " == *" report "* && " $STEPS " == *" gpu-tests "* ]] && ok install; then beside=gpu-tests; fi
for s in $STEPS; do
  if [[ $s == "$beside" ]]; then continue; fi
  [[ $s != report || -z $beside ]] || started "$beside" "${RUNS[$beside]}"
  chosen_step "$s"
  [[ $s != report || -z $beside ]] || joined "$beside"
done
trap - INT TERM
pack
echo "total $(( $(date +%s) - STARTED )) s"
exit $FAILED
