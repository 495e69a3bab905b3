#!/usr/bin/env bash
# GPU readiness check: install labelenh, then prove and measure its CUDA paths in at most
# 8 minutes (the stages of scripts/gpu_check.py, each in its own process under a timeout).
#
#   scripts/gpu_check.sh                  # on a machine with one CUDA GPU, from a fresh checkout
#   scripts/gpu_check.sh --dry-run        # every stage on the CPU at tiny sizes, no install
#   scripts/gpu_check.sh --out DIR        # figures to DIR (default: $OUT, else gpu_check_out/)
#
# Output: DIR/gpu_check.jsonl (one JSON line per figure), DIR/gpu_check.md (the table),
# DIR/gpu_check.log (everything the stages printed). Exit status: 0 when every stage passed,
# 1 when one failed or ran out of time (each named on stderr), 2 for bad arguments.
#
# Install: a Python that already imports torch with CUDA (GPU images ship one; a multi-GB
# download is what the time limit cannot afford) gets a venv that sees its packages, and
# labelenh is installed into it without the network; otherwise `pip install -e .[dev]`.
# GPU_CHECK_TIMEOUT_S caps every stage's timeout (seconds), e.g. for a quick trial.
set -uo pipefail

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; }

DRY=0
OUTDIR=${OUT:-gpu_check_out}
while [ $# -gt 0 ]; do
    case $1 in
        --dry-run) DRY=1 ;;
        --out) [ $# -ge 2 ] || { echo "gpu_check.sh: --out needs a folder" >&2; exit 2; }; OUTDIR=$2; shift ;;
        --out=*) OUTDIR=${1#--out=} ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu_check.sh: unknown option '$1' (use --dry-run, --out DIR, --help)" >&2; exit 2 ;;
    esac
    shift
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUTDIR" || { echo "gpu_check.sh: cannot create $OUTDIR" >&2; exit 2; }
OUTDIR=$(cd "$OUTDIR" && pwd)  # relative to where the script was called from
cd "$ROOT" || exit 2
: >"$OUTDIR/gpu_check.jsonl"
LOG=$OUTDIR/gpu_check.log
: >"$LOG"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

say() { echo "gpu_check: $*" | tee -a "$LOG" >&2; }
CUDA_TORCH='import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'

# ---- install ---------------------------------------------------------------------------------
if [ "$DRY" = 1 ]; then
    PY=${PYTHON:-python3}  # the dry run tests the check itself: whatever Python runs the suite
    say "dry run: no install, $PY, every stage on the CPU"
else
    T0=$SECONDS
    if [ -x .venv/bin/python ] && .venv/bin/python -c "$CUDA_TORCH" 2>/dev/null; then
        PY=.venv/bin/python
        say "install: reusing .venv"
    elif ${PYTHON:-python3} -c "$CUDA_TORCH" 2>/dev/null; then
        # A venv that sees the existing CUDA torch and everything beside it. --system-site-packages
        # is not enough: when that Python is itself a venv (GPU images ship one), it would show
        # the base interpreter's packages, not the venv's; a .pth file names them instead.
        BASE=$(${PYTHON:-python3} -c 'import sys; print(sys.executable)')
        "$BASE" -m venv .venv-gpu || { say "FAILED: install (venv)"; exit 1; }
        PY=.venv-gpu/bin/python
        SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
        "$BASE" -c 'import sys; print("\n".join(p for p in sys.path if p.endswith("-packages")))' \
            >"$SITE/base-packages.pth"
        say "install: venv over $BASE (torch with CUDA found there)"
        # offline, and --no-build-isolation builds with the setuptools already there
        if ! timeout 180 "$PY" -m pip install -q --no-index --no-build-isolation -e ".[dev]" >>"$LOG" 2>&1; then
            say "install: not every [dev] extra is there offline; installing labelenh without dependencies"
            if ! timeout 120 "$PY" -m pip install -q --no-index --no-build-isolation --no-deps -e . >>"$LOG" 2>&1; then
                # e.g. an old setuptools in the venv that cannot build editable wheels offline:
                # the checkout on the venv's path is what an editable install amounts to
                say "install: pip cannot build offline here (see $LOG); the checkout goes on the venv's path"
                echo "$ROOT" >"$SITE/labelenh-checkout.pth"
            fi
        fi
    else
        ${PYTHON:-python3} -m venv .venv-gpu || { say "FAILED: install (venv)"; exit 1; }
        PY=.venv-gpu/bin/python
        say "install: no CUDA torch found; pip install -e .[dev] (downloads torch)"
        timeout 900 "$PY" -m pip install -q -e ".[dev]" >>"$LOG" 2>&1 \
            || { say "FAILED: install (pip install -e .[dev]; see $LOG)"; exit 1; }
    fi
    "$PY" -c 'import h5py, numpy, pytest, rich, timm, torch, torchvision, typer, labelenh' >>"$LOG" 2>&1 \
        || { say "FAILED: install (a dependency does not import; see $LOG)"; exit 1; }
    "$PY" -c "$CUDA_TORCH" || { say "FAILED: install (torch in $PY sees no CUDA device)"; exit 1; }
    say "install: done in $((SECONDS - T0)) s"
fi

# ---- stages ----------------------------------------------------------------------------------
# Timeouts sum to 480 s: the 8 minutes the check may take after the install. Each stage
# imports torch and initialises CUDA on its own (a few seconds), so a hung stage costs only
# its own slot and the later stages still run.
STAGES="env:20 cuda-tests:100 views:25 export:60 student:140 compile:85 folder:40 report:10"
ARGS=(--out "$OUTDIR" --work "$WORK")
[ "$DRY" = 1 ] && ARGS+=(--dry-run)
FAILED=()
T0=$SECONDS
for item in $STAGES; do
    stage=${item%%:*}
    limit=${item##*:}
    # the dry run checks the script on a CPU that other jobs may share: importing torch alone
    # can take most of a 10 s slot there; the GPU host keeps the limits above
    if [ "$DRY" = 1 ] && [ "$limit" -lt 60 ]; then
        limit=60
    fi
    if [ -n "${GPU_CHECK_TIMEOUT_S:-}" ] && [ "$GPU_CHECK_TIMEOUT_S" -lt "$limit" ]; then
        limit=$GPU_CHECK_TIMEOUT_S
    fi
    say "stage $stage (at most ${limit} s)"
    t=$SECONDS
    PYTHONUNBUFFERED=1 timeout --kill-after=10 "$limit" "$PY" scripts/gpu_check.py --stage "$stage" "${ARGS[@]}" \
        2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    [ $rc -eq 0 ] && continue
    why=$([ $rc -eq 124 ] || [ $rc -eq 137 ] && echo "timed out after ${limit} s" || echo "exit $rc")
    FAILED+=("$stage ($why)")
    if [ $rc -ne 1 ]; then  # exit 1: the stage wrote its own failure line
        printf '{"figure": "stage", "case": "%s", "value": "failed", "unit": "", "goal": null, "met": null, "rc": %d, "seconds": %d}\n' \
            "$stage" "$rc" "$((SECONDS - t))" >>"$OUTDIR/gpu_check.jsonl"
    fi
    say "FAILED: stage $stage: $why"
done
say "stages done in $((SECONDS - T0)) s; figures in $OUTDIR"
if [ ${#FAILED[@]} -gt 0 ]; then
    say "FAILED stages: ${FAILED[*]}"
    exit 1
fi
say "all stages passed"
