#!/usr/bin/env bash
# What a first run on a GPU must check, in one run of under 8 minutes on an H200,
# printed as one report:
#
#   kernels    tests/test_kernels.py on CUDA (bf16 and fp32, the CUDA-only test too), and
#              the fused kernel against losses.info_nce at B = 65,536, D = 1,024
#   sweep      the kernels' tiles, warps and stages at B in {2048, 16384, 65536},
#              D in {768, 1024}, bf16, one-way and symmetric: the best per shape and overall
#   bench      bench/bench_losses.py's table with the chosen tiles, and from it the
#              entries for losses.MEASURED_FASTEST (--loss-impl auto) and the speed targets
#   train      distill.py and joint_train.py, 30 steps each, on a tiny BERT built here
#              (hidden 256, 4 layers, dropout on), bf16, batch 512 in mini-batches of 64:
#              --loss-impl triton against torch, resume, gradient caching against one
#              graph with dropout on, loading in sentence-transformers
#   retrieval  bench/bench_retrieval.py at N = 10^6, Q = 10,000
#
#   bash bench/gpu_check.sh                         # on a CUDA GPU
#   bash bench/gpu_check.sh --smoke                 # small sizes, on a CPU too (kernels interpreted)
#   bash bench/gpu_check.sh --parts sweep,bench     # some parts only, in this order
#
# Writes report.txt (what it prints), log.txt (the commands' own output), sweep.json
# and bench-oneway.jsonl / bench-symmetric.jsonl under $OUT, or runs/gpu_check/ where
# OUT is unset. Each command has a time limit (below) so that the whole run ends in
# time and a part that hangs costs only its own share. Exit status: 0 if every check
# passed, 1 if one failed or ran out of time, 2 on bad usage. Needs no network and no
# `datasets`; it builds its tiny models itself.
set -uo pipefail
cd "$(dirname "$0")/.."

usage="usage: bash bench/gpu_check.sh [--smoke] [--parts kernels,sweep,bench,train,retrieval]"
smoke=0
parts="kernels,sweep,bench,train,retrieval"
while [ $# -gt 0 ]; do
    case "$1" in
        --smoke) smoke=1 ;;
        --parts)
            [ $# -ge 2 ] || { echo "error: --parts needs a list such as sweep,bench; $usage" >&2; exit 2; }
            parts=$2
            shift
            ;;
        -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "error: unknown argument '$1'; $usage" >&2; exit 2 ;;
    esac
    shift
done
for part in ${parts//,/ }; do
    case "$part" in
        kernels | sweep | bench | train | retrieval) ;;
        *)
            echo "error: unknown part '$part' in --parts; the parts are kernels, sweep, bench, train, retrieval" >&2
            exit 2
            ;;
    esac
done

PY=${PYTHON:-python3}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
unset TRITON_INTERPRET  # set below, per command, only where the kernels must be interpreted
if ! cuda=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null); then
    echo "error: '$PY' cannot import torch; set PYTHON to the interpreter that has this repository's requirements" >&2
    exit 2
fi
if [ "$cuda" != 1 ] && [ "$smoke" != 1 ]; then
    echo "error: no CUDA device here, and the full check needs one; on a CPU run bash bench/gpu_check.sh --smoke" >&2
    exit 2
fi

# Seconds each command may take: together at most 7.5 minutes, so the whole run ends
# within 8 on an H200. Smoke runs on a CPU are small but slow, so they get more.
limit_machine=20 limit_tests=75 limit_reference=35 limit_sweep=120 limit_bench=45 limit_bench_symmetric=30
limit_table=10 limit_train=90 limit_retrieval=30
if [ "$smoke" = 1 ]; then
    limit_machine=60 limit_tests=120 limit_reference=120 limit_sweep=120 limit_bench=60 limit_bench_symmetric=60
    limit_table=60 limit_train=300 limit_retrieval=120
fi
sweep_budget=$((limit_sweep - 20))  # the sweep stops timing by itself, leaving time to print its tables

out=${OUT:-runs/gpu_check}
mkdir -p "$out"
report="$out/report.txt" log="$out/log.txt"
: >"$report"
: >"$log"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Everything printed from here on goes to the console and the report; commands' stderr to the log.
exec > >(tee -a "$report") 2>>"$log"
tee_pid=$!
failed=()
smoke_flag=()
[ "$smoke" = 1 ] && smoke_flag=(--smoke)
# Smoke sizes are tiny: one thread a process is fastest, and keeps a shared CPU from thrashing.
[ "$cuda" != 1 ] && export OMP_NUM_THREADS=1
interpret=()  # no CUDA: the Triton kernels run through Triton's interpreter
[ "$cuda" != 1 ] && interpret=(env TRITON_INTERPRET=1)

limited() {  # limited SECONDS COMMAND...: run it for at most SECONDS; on failure, the end of its stderr too
    local seconds=$1 status start=$SECONDS
    shift
    echo "\$ $*" >>"$log"
    timeout --kill-after=10 "$seconds" "$@" 2>"$work/stderr"
    status=$?
    cat "$work/stderr" >>"$log"
    echo "($((SECONDS - start)) s of at most $seconds)"
    if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
        echo "TIMED OUT after its limit of $seconds s: $*"
    elif [ "$status" -ne 0 ]; then
        echo "FAILED with exit status $status: $*"
        tail -n 8 "$work/stderr" | sed 's/^/    | /'
    fi
    return "$status"
}

heading() {
    echo
    echo "== $1 =="
}

# ---------------------------------------------------------------------------
# the parts

part_kernels() {
    heading "kernels: tests/test_kernels.py on $([ "$cuda" = 1 ] && echo CUDA || echo CPU, the CUDA test skipped)"
    # The CUDA test (every shape, bf16 and fp32, one-way and symmetric, scales 20 and 100) and the
    # tests of the tiles and of --loss-impl; the CPU-only tests (chunked, interpreter) run in CI.
    local parallel=()
    if [ "$cuda" = 1 ] && "$PY" -c "import xdist" 2>/dev/null; then
        parallel=(-n 4)  # four processes compile the kernels' variants side by side
    fi
    limited "$limit_tests" "$PY" -m pytest tests/test_kernels.py -q --tb=line -rfEs \
        -k "cuda or pick or auto or tiles" "${parallel[@]}" || failed+=("kernels: tests")
    heading "kernels: the fused kernel against losses.info_nce at the largest batch"
    limited "$limit_reference" "${interpret[@]}" "$PY" bench/gpu_check.py kernel-check "${smoke_flag[@]}" \
        || failed+=("kernels: reference")
}

part_sweep() {
    heading "sweep: the kernels' tiles, warps and stages"
    limited "$limit_sweep" "${interpret[@]}" "$PY" bench/gpu_check.py sweep "${smoke_flag[@]}" \
        --budget-s "$sweep_budget" --json "$out/sweep.json" --tiles-file "$work/tiles.txt" || failed+=("sweep")
}

part_bench() {
    heading "bench: bench/bench_losses.py, forward + backward, bf16"
    local tiles=() peak=() sizes=(--batch-sizes 2048 16384 65536 --dims 768 1024)
    if [ -s "$work/tiles.txt" ]; then
        read -r forward backward <"$work/tiles.txt"
        tiles=(--forward-tiles "$forward" --backward-tiles "$backward")
        echo "tiles chosen by the sweep: forward $forward, backward $backward"
    else
        echo "no sweep in this run: the kernel runs with fused.py's tiles"
    fi
    [ -s "$work/peak.txt" ] && peak=(--peak-tflops "$(cat "$work/peak.txt")")
    [ "$smoke" = 1 ] && sizes=(--batch-sizes 64 --dims 32)
    local oneway=("$PY" bench/bench_losses.py "${sizes[@]}" --impls torch torch-lowp chunked triton --warmup 1
        --repeats 3 "${peak[@]}" "${tiles[@]}" --json "$out/bench-oneway.jsonl")
    # symmetric: the kernel and its fair rival only, to stay within the time
    local symmetric=("$PY" bench/bench_losses.py "${sizes[@]}" --impls torch-lowp triton --symmetric --warmup 1
        --repeats 3 "${peak[@]}" "${tiles[@]}" --json "$out/bench-symmetric.jsonl")
    if [ "$cuda" = 1 ]; then
        limited "$limit_bench" "${oneway[@]}" || failed+=("bench: one-way")
        limited "$limit_bench_symmetric" "${symmetric[@]}" || failed+=("bench: symmetric")
    else
        # bench_losses.py times CUDA kernels; here it can only show that it accepts these flags
        local text
        text=$(timeout "$limit_bench" "${oneway[@]}" 2>&1; timeout "$limit_bench" "${symmetric[@]}" 2>&1)
        if [ "$(grep -c "needs a CUDA GPU" <<<"$text")" = 2 ]; then
            echo "skipped: no CUDA device (bench_losses.py accepted the flags of both runs, then stopped)"
        else
            echo "FAILED: bench_losses.py did not stop as it should without CUDA:"
            sed 's/^/    | /' <<<"$text" | tail -n 8
            failed+=("bench: flags")
        fi
    fi
    heading "bench: the entries for losses.MEASURED_FASTEST and the targets"
    limited "$limit_table" "$PY" bench/gpu_check.py auto-table "$out/bench-oneway.jsonl" \
        "$out/bench-symmetric.jsonl" || failed+=("bench: table")
}

part_train() {
    heading "train: distill.py and joint_train.py end to end"
    limited "$limit_train" "${interpret[@]}" "$PY" bench/gpu_check.py train "${smoke_flag[@]}" --work "$work/train" \
        || failed+=("train")
}

part_retrieval() {
    heading "retrieval: bench/bench_retrieval.py"
    local sizes=(--sizes 1000000 --queries 10000)
    [ "$smoke" = 1 ] && sizes=(--sizes 3000 --queries 50)
    limited "$limit_retrieval" "$PY" bench/bench_retrieval.py "${sizes[@]}" >"$work/retrieval.txt"
    local status=$?
    cat "$work/retrieval.txt"
    # bench_retrieval.py runs each size in a child process and prints "failed" for one that fails
    if [ "$status" -ne 0 ] || grep -q " failed" "$work/retrieval.txt"; then
        failed+=("retrieval")
    fi
}

# ---------------------------------------------------------------------------

started=$SECONDS
echo "bash bench/gpu_check.sh $([ "$smoke" = 1 ] && echo "--smoke ")--parts $parts"
echo "$(date -u '+%Y-%m-%d %H:%M UTC') | commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    "| report in $report"
[ "$smoke" = 1 ] && echo "smoke: small sizes, to check that every part runs; its numbers mean nothing"
limited "$limit_machine" "$PY" bench/gpu_check.py machine --peak-file "$work/peak.txt" || failed+=("machine")
for part in ${parts//,/ }; do
    "part_$part"
done

echo
if [ ${#failed[@]} -eq 0 ]; then
    echo "== all checks passed ($((SECONDS - started)) s) =="
    status=0
else
    echo "== FAILED: $(IFS=';'; echo "${failed[*]}") ($((SECONDS - started)) s); log.txt has each command's output =="
    status=1
fi
exec >&- 2>&-
wait "$tee_pid" 2>/dev/null
exit "$status"
