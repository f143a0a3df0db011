#!/usr/bin/env bash
# The first thing to run on a GPU machine, in at most ~8 minutes: device facts, the install, the
# CUDA tests (graphed + compiled updates against eager ones on real buffer batches), training SPS
# on CUDA with and without --cuda-graph, every host sync of short runs, and an update-latency table.
#
# Through the remote device tool (the machine reaches no package index, so the wheels travel):
#   here, once:   bash scripts/gpu_wheels.sh                 # fills the git-ignored .whl/ (~54 MB)
#   run tool:     command "bash scripts/gpu_check.sh", carry [".whl"], timeout_s 540
# Results: $OUT/gpu_check-<UTC stamp>.md (the report) and .log (every output in full); without
# $OUT, benchmarks/results/. The report is printed at the end too, then a summary line per step.
#
# On a machine without a GPU: GPU_CHECK_SMOKE=1 bash scripts/gpu_check.sh runs every step in a tiny
# CPU form (no install; the --cuda-graph runs are reported as needing CUDA), so that the script
# cannot die on a typo the day a GPU comes (tests/test_gpu_check.py does this).
#
# Settings (environment): GPU_CHECK_SMOKE=1; GPU_CHECK_INSTALL=0|1 (default 1, 0 in smoke);
# GPU_CHECK_BUDGET_S, the whole script's seconds (default 465): a step gets its own limit or what is
# left of the budget, whichever is less, and is skipped below 10 s; PYTHON (default python3);
# GPU_CHECK_WHEELS (default .whl) and GPU_CHECK_SITE (default /tmp/fastrl-site): the wheels and
# where they go.
#
# No `set -e`: every step runs whatever became of the others; each one's exit code is collected.
set -u -o pipefail
SECONDS=0
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
SMOKE=${GPU_CHECK_SMOKE:-0}
if [ "$SMOKE" = 1 ]; then INSTALL=${GPU_CHECK_INSTALL:-0}; else INSTALL=${GPU_CHECK_INSTALL:-1}; fi
BUDGET=${GPU_CHECK_BUDGET_S:-465}
STAMP=$(date -u +%Y%m%d-%H%M%S)
RESULTS=${OUT:-$ROOT/benchmarks/results}
mkdir -p "$RESULTS"
REPORT=$RESULTS/gpu_check-$STAMP.md
LOG=$RESULTS/gpu_check-$STAMP.log
WHEELS=${GPU_CHECK_WHEELS:-$ROOT/.whl}  # carried wheels (scripts/gpu_wheels.sh)
SITE=${GPU_CHECK_SITE:-/tmp/fastrl-site}  # where they are installed
PY=${PYTHON:-python3}
export PY PYTHONUNBUFFERED=1 PYTHONPATH=$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}
STEPS=()     # "name rc seconds" per step
FAILED=0
: > "$REPORT"
: > "$LOG"

note() { printf '%s\n' "$*" >> "$REPORT"; }
section() { note ""; note "## $*"; note ""; }
fenced() { note '```'; cat "$1" >> "$REPORT"; note '```'; }

# step NAME SECONDS KIND COMMAND...: COMMAND under `timeout` for SECONDS or what is left of the
# budget. KIND: text (its output fenced in the report), md (its stdout is markdown, put in as it is),
# row (its stdout is one table row; a failure becomes a row, its stderr goes to the notes below).
step() {
    local name=$1 want=$2 kind=$3
    shift 3
    local left=$((BUDGET - SECONDS - 5))
    local limit=$((want < left ? want : left))
    if ((limit < 10)); then
        if [ "$kind" = row ]; then note "| $name | skipped: out of the ${BUDGET} s budget |"; else note "skipped: out of the ${BUDGET} s budget"; fi
        STEPS+=("$name skipped 0")
        FAILED=1
        return
    fi
    local t0=$SECONDS out err rc
    out=$(mktemp)
    err=$(mktemp)
    echo "== $name (limit ${limit} s): $*" | tee -a "$LOG"
    timeout -k 10 "$limit" "$@" > "$out" 2> "$err"
    rc=$?
    { echo "-- stdout"; cat "$out"; echo "-- stderr"; cat "$err"; } >> "$LOG"
    local why="exit code $rc"
    ((rc == 124 || rc == 137)) && why="timed out after ${limit} s (exit code $rc)"
    case $kind in
        text) tail -n 100 "$out" > "$out.tail"; fenced "$out.tail"; rm -f "$out.tail" ;;
        md) cat "$out" >> "$REPORT" ;;
        row) if ((rc == 0)); then cat "$out" >> "$REPORT"; else
                 note "| $name | $why |"; { echo "$name: $why; stderr tail:"; tail -n 15 "$err"; echo; } >> "$NOTES"; fi ;;
    esac
    if ((rc != 0)) && [ "$kind" != row ]; then
        note ""; note "$name: $why; stderr tail:"; tail -n 30 "$err" > "$err.tail"; fenced "$err.tail"; rm -f "$err.tail"
    fi
    ((rc != 0)) && FAILED=1
    STEPS+=("$name $rc $((SECONDS - t0))")
    echo "   -> $why in $((SECONDS - t0)) s" | tee -a "$LOG"
    rm -f "$out" "$err"
}

facts() {
    echo "date (UTC): $(date -u)"
    echo "commit: $(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo 'no git metadata in this copy')"
    echo "host: $(uname -srm), $(nproc) CPUs"
    free -g 2>/dev/null | head -n 2
    nvidia-smi 2>&1 || echo "nvidia-smi: not available"
    "$PY" - <<'EOF'
import sys
print("python", sys.version.split()[0], sys.executable)
try:
    import torch
except ImportError as exc:
    print("torch: not importable:", exc)
    raise SystemExit(0)
cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
print("torch", torch.__version__, "| CUDA", torch.version.cuda, "| cuDNN", cudnn)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device:", torch.cuda.get_device_name(0), "| capability", torch.cuda.get_device_capability(0),
          f"| {p.total_memory / 2**30:.0f} GiB | {p.multi_processor_count} SMs")
else:
    print("torch sees no CUDA device")
for name in ("triton", "numpy", "gymnasium", "envpool", "numba"):
    try:
        print(name, __import__(name).__version__)
    except Exception as exc:  # noqa: BLE001 (a fact to report, whatever it is)
        print(name, "not importable:", type(exc).__name__, str(exc)[:120])
EOF
}

# envpool imports its asset folders at import time; the asset packages are hundreds of MB and
# CartPole and Pendulum use none of them, so empty stand-ins are made where none exist.
stub_envpool_assets() {
    local ep=$SITE/envpool meta
    [ -d "$ep" ] || return 0
    meta=$ep/mujoco/myosuite/assets/metadata
    mkdir -p "$ep/atari/roms" "$ep/vizdoom/maps" "$meta"
    [ -f "$meta/myosuite_tasks.json" ] || echo "[]" > "$meta/myosuite_tasks.json"
    [ -f "$meta/myosuite_oracle_metadata.json" ] ||
        echo '{"commit": "", "numpy2_broken_ids": [], "version": ""}' > "$meta/myosuite_oracle_metadata.json"
}

install() {
    if ! timeout 120 "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "torch is missing or sees no CUDA: pip install torch==2.13.0"
        timeout 400 "$PY" -m pip install -q torch==2.13.0 || echo "pip install torch==2.13.0 failed: exit code $?"
    fi
    if compgen -G "$WHEELS/*.whl" > /dev/null; then
        echo "installing the carried wheels into $SITE: $(cd "$WHEELS" && ls -- *.whl | tr '\n' ' ')"
        timeout 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$SITE" "$WHEELS"/*.whl || echo "wheel install failed: exit code $?"
        stub_envpool_assets
    fi
    local missing
    missing=$(timeout 60 "$PY" -c "import importlib.util as u; print(' '.join(m for m in ('gymnasium', 'envpool', 'numpy', 'matplotlib', 'numba', 'pytest') if u.find_spec(m) is None))")
    if [ -n "$missing" ]; then
        echo "missing: $missing; trying the package index (this machine may reach none)"
        timeout 180 "$PY" -m pip install -q $missing || echo "pip install $missing failed: exit code $?"
        stub_envpool_assets
    fi
    echo "fastrl from $ROOT (PYTHONPATH; nothing else to build)"
}

verify_imports() {
    "$PY" -c "import fastrl.train, gymnasium, pytest; print('fastrl', fastrl.train.__file__, '| gymnasium', gymnasium.__version__)"
    "$PY" -c "import envpool; print('envpool', envpool.__version__)" || echo "envpool not importable: the trainer falls back to gymnasium vector envs"
}
export -f facts verify_imports
export ROOT

if [ "$SMOKE" = 1 ]; then
    DEVICE=cpu
    DQN_SPS="--total-steps 1200 --learning-starts 400 --hidden-sizes 16 16 --batch-size 32 --eval-episodes 1 --threads 1"
    TD3_SPS="--algo td3 --env Pendulum-v1 --total-steps 600 --learning-starts 300 --hidden-sizes 16 16 --batch-size 32 --eval-episodes 1 --threads 1"
    DQN_SYNC=$DQN_SPS
    TD3_SYNC=$TD3_SPS
    LATENCY="--device cpu --modes eager graphed --workloads dqn td3 --calls 2"
    TESTS="tests/test_cuda_graph.py -k keyed"  # the CPU half runs in the default suite; here, one to prove the wiring
else
    DEVICE=cuda
    DQN_SPS="--total-steps 20000 --log-every 2048"
    TD3_SPS="--algo td3 --env Pendulum-v1 --total-steps 5000 --learning-starts 1000 --log-every 1000"
    DQN_SYNC="--total-steps 4096 --learning-starts 1024 --log-every 1024 --eval-episodes 2"
    TD3_SYNC="--algo td3 --env Pendulum-v1 --total-steps 2000 --learning-starts 1000 --log-every 500 --eval-episodes 2"
    LATENCY="--device cuda --calls 300"
    TESTS="tests/test_cuda.py tests/test_cuda_graph.py"
fi
NOTES=$(mktemp)

note "# fastrl GPU check, $STAMP (UTC)"
note ""
note "\`bash scripts/gpu_check.sh\`$([ "$SMOKE" = 1 ] && echo " with GPU_CHECK_SMOKE=1 (tiny CPU runs: no figure here means anything)"); budget ${BUDGET} s."

section "Device"
step device 40 text bash -c facts

section "Install"
if [ "$INSTALL" = 1 ]; then
    t0=$SECONDS
    install > "$NOTES.install" 2>&1
    cat "$NOTES.install" >> "$LOG"
    fenced "$NOTES.install"
    STEPS+=("install - $((SECONDS - t0))")
else
    note "skipped (GPU_CHECK_INSTALL=0)"
fi
step imports 60 text bash -c verify_imports

section "CUDA tests"
# shellcheck disable=SC2086  # the test selection is a word list
step cuda-tests 200 text "$PY" -m pytest -q -rs --durations=8 $TESTS

section "Training SPS"
note "run SPS: every env step over the whole loop (compilation, capture and evaluations included); best window SPS: the fastest log window wholly in the learning phase."
note ""
"$PY" scripts/train_sps.py --header >> "$REPORT"
# shellcheck disable=SC2086
step sps-dqn 100 row "$PY" scripts/train_sps.py "dqn CartPole-v1 (preset)" -- $DQN_SPS --device $DEVICE
if [ "$DEVICE" = cuda ]; then
    # shellcheck disable=SC2086
    step sps-dqn-graph 70 row "$PY" scripts/train_sps.py "dqn CartPole-v1, --cuda-graph" -- $DQN_SPS --device cuda --cuda-graph
else
    note "| dqn CartPole-v1, --cuda-graph | needs CUDA |"
fi
# shellcheck disable=SC2086
step sps-td3 100 row "$PY" scripts/train_sps.py "td3 Pendulum-v1" -- $TD3_SPS --device $DEVICE
if [ "$DEVICE" = cuda ]; then
    # shellcheck disable=SC2086
    step sps-td3-graph 70 row "$PY" scripts/train_sps.py "td3 Pendulum-v1, --cuda-graph" -- $TD3_SPS --device cuda --cuda-graph
else
    note "| td3 Pendulum-v1, --cuda-graph | needs CUDA |"
fi
if [ -s "$NOTES" ]; then note ""; fenced "$NOTES"; fi

section "Host syncs"
GRAPH_FLAG=$([ "$DEVICE" = cuda ] && echo --cuda-graph)
# shellcheck disable=SC2086
step sync-dqn 60 md "$PY" scripts/sync_audit.py --title "dqn CartPole-v1 (preset), compiled" -- $DQN_SYNC --device $DEVICE
# shellcheck disable=SC2086
step sync-td3-graph 60 md "$PY" scripts/sync_audit.py --title "td3 Pendulum-v1, compiled ${GRAPH_FLAG:-(no graph: CPU)}" -- $TD3_SYNC --device $DEVICE $GRAPH_FLAG
# shellcheck disable=SC2086
step sync-td3 60 md "$PY" scripts/sync_audit.py --title "td3 Pendulum-v1, compiled, no graph" -- $TD3_SYNC --device $DEVICE

section "Update latency"
# shellcheck disable=SC2086
step latency 120 md "$PY" scripts/update_latency.py $LATENCY

section "Steps"
note "| step | exit code | seconds |"
note "|---|---|---|"
for s in "${STEPS[@]}"; do read -r n c t <<< "$s"; note "| $n | $c | $t |"; done
note ""
note "total: ${SECONDS} s of a ${BUDGET} s budget"
rm -f "$NOTES" "$NOTES.install"

cat "$REPORT"
echo
echo "report: $REPORT"
echo "log:    $LOG"
echo "steps (name, exit code, seconds): ${STEPS[*]}"
exit "$FAILED"
