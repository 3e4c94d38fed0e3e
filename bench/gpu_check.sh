#!/usr/bin/env bash
# What a first run on a GPU must check, in one run of under 8 minutes on an H100, printed
# as one report:
#
#   kernels    tests/test_kernels.py on CUDA, and the fused kernel against losses.info_nce at
#              B = 65,536, D = 1,024 with its memory (bench_losses.py --check)
#   bench      bench_losses.py --sweep --check: the kernels' tiles, warps and stages at B in
#              {2048, 16384, 65536}, D in {768, 1024}, bf16, one-way and symmetric, then the table
#              with the chosen tiles, the entries for losses.MEASURED_FASTEST and the targets
#   train      distill.py and joint_train.py, 30 steps each on tiny BERTs built here (hidden 256,
#              dropout on), bf16, batch 512 in mini-batches of 64: --loss-impl triton against
#              torch, a run killed with -9 and resumed against an uninterrupted one, the runs
#              loaded in sentence-transformers; gradient caching (tests/test_joint_train.py) on CUDA
#   retrieval  bench/bench_retrieval.py at N = 10^6, Q = 10,000
#
#   bash bench/gpu_check.sh                         # on a CUDA GPU
#   bash bench/gpu_check.sh --smoke                 # small sizes, on a CPU too (kernels interpreted)
#   bash bench/gpu_check.sh --parts bench,train     # some parts only, in this order
#
# Writes report.txt (what it prints), log.txt (the commands' own output) and bench.jsonl under
# $OUT, or runs/gpu_check/; builds its models in a temporary folder it removes. Each part has a
# time limit, so that a part that hangs costs only its own share. Exit status: 0 if every check
# passed, 1 if one failed or ran out of time, 2 on bad usage. Needs no network; the train part
# needs the datasets package, and says so and is skipped without it.
set -uo pipefail
cd "$(dirname "$0")/.."

usage="usage: bash bench/gpu_check.sh [--smoke] [--parts kernels,bench,train,retrieval]"
smoke=0
parts="kernels,bench,train,retrieval"
while [ $# -gt 0 ]; do
    case "$1" in
        --smoke) smoke=1 ;;
        --parts)
            [ $# -ge 2 ] || { echo "error: --parts needs a list such as bench,train; $usage" >&2; exit 2; }
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
        kernels | bench | train | retrieval) ;;
        *) echo "error: unknown part '$part' in --parts; the parts are kernels, bench, train, retrieval" >&2; exit 2 ;;
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

# Seconds each part may take, together at most 7.8 minutes so that the whole run ends
# within 8 on an H100, and the sizes. Smoke runs on a CPU are small but slow.
limit_kernels=110 limit_bench=190 limit_train=140 limit_retrieval=30
# D = 1024 (XLM-R large, the paper's) first, so that the sweep's time budget spares it at B = 65,536
check=(--batch-sizes 65536 --dims 1024) grid=(--batch-sizes 2048 16384 65536 --dims 1024 768 --sweep-budget-s 90)
retrieval=(--sizes 1000000 --queries 10000)
models=(256 4 128 600)  # the student's hidden size and layers, the teacher's hidden size, rows
steps=30 kill_after=15 mini=64 train=(--dev-size 32 --per-device-batch-size 512 --max-length 64 --save-every 10)
device=() interpret=() test_device=(MIMO_TEST_DEVICE=cuda)
if [ "$smoke" = 1 ]; then
    limit_kernels=240 limit_bench=180 limit_train=300 limit_retrieval=120
    check=(--batch-sizes 96 --dims 40) grid=(--batch-sizes 64 --dims 48 32) retrieval=(--sizes 3000 --queries 50)
    models=(32 2 24 40)
    # 6 steps: a kill that lands a step or two late (a loaded CPU) still leaves steps after a checkpoint to redo
    steps=6 kill_after=3 mini=4 train=(--dev-size 8 --per-device-batch-size 16 --max-length 32 --save-every 2)
fi
if [ "$cuda" != 1 ]; then
    device=(--device cpu) interpret=(env TRITON_INTERPRET=1) test_device=()  # the kernels through Triton's interpreter
    export OMP_NUM_THREADS=1  # tiny sizes: one thread a process is fastest, and spares a shared CPU
fi

out=${OUT:-runs/gpu_check}
mkdir -p "$out"
report="$out/report.txt" log="$out/log.txt"
: >"$report"
: >"$log"
: >"$out/bench.jsonl"
work=$(mktemp -d)  # this run's own folder: the only one it deletes
trap 'rm -rf "$work"' EXIT
# Everything printed from here on goes to the console and the report (fd 3 too, for
# commands whose own output goes to the log); the commands' stderr goes to the log.
exec > >(tee -a "$report") 2>>"$log" 3>&1
tee_pid=$!
failed=() skipped=()

limited() {  # limited COMMAND...: run it until the part's deadline; say how long it took, and why it failed
    local seconds=$((deadline - SECONDS)) start=$SECONDS status
    [ "$seconds" -ge 1 ] || seconds=1
    echo "\$ $*" >>"$log"
    timeout --kill-after=10 "$seconds" "$@" 2>"$work/stderr"
    status=$?
    cat "$work/stderr" >>"$log"
    echo "(${name:-}$((SECONDS - start)) s)" >&3
    if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
        echo "TIMED OUT at the part's limit: $*" >&3
    elif [ "$status" -ne 0 ]; then
        echo "FAILED with exit status $status: $*" >&3
        tail -n 8 "$work/stderr" | sed 's/^/    | /' >&3
    fi
    return "$status"
}

killed() {  # killed STEP DIR COMMAND...: run it, and kill -9 it once DIR/log.jsonl has logged training step STEP
    local step=$1 dir=$2 start=$SECONDS pid status
    shift 2
    echo "\$ $* (killed after step $step)" >>"$log"
    "$@" >>"$log" 2>&1 &
    pid=$!
    until grep -E "\"step\": $step[,}]" "$dir/log.jsonl" 2>/dev/null | grep -q '"loss"' ||
        ! kill -0 "$pid" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; do
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null
    wait "$pid"
    status=$?
    cp "$dir/log.jsonl" "$dir.killed.jsonl" 2>/dev/null  # what it logged, for the comparison after --resume
    echo "(${name:-}$((SECONDS - start)) s)"
    [ "$status" -eq 137 ] || { echo "FAILED: it ended (exit status $status) before it could be killed: $*"; return 1; }
}

heading() { printf '\n== %s ==\n' "$1"; }

# ---------------------------------------------------------------------------
# the parts

part_kernels() {
    heading "kernels: tests/test_kernels.py on $([ "$cuda" = 1 ] && echo CUDA || echo CPU, the CUDA test skipped)"
    deadline=$((SECONDS + limit_kernels))
    # The CUDA test (every shape, bf16 and fp32, one-way and symmetric, scales 20 and 100) and the
    # tests of the tiles and of --loss-impl; the CPU-only tests (chunked, interpreter) run in CI.
    limited "$PY" -m pytest tests/test_kernels.py -q --tb=line -rfEs -k "cuda or pick or auto or tiles" ||
        failed+=("kernels: tests")
    heading "kernels: the fused kernel against losses.info_nce at the largest batch"
    limited "${interpret[@]}" "$PY" bench/bench_losses.py "${device[@]}" "${check[@]}" --impls triton --check \
        --dtype bf16 fp32 --symmetric both --warmup 1 --repeats 3 || failed+=("kernels: against info_nce")
}

part_bench() {
    heading "bench: bench/bench_losses.py --sweep --check, forward + backward"
    deadline=$((SECONDS + limit_bench))
    limited "${interpret[@]}" "$PY" bench/bench_losses.py "${device[@]}" "${grid[@]}" --sweep --check \
        --symmetric both --warmup 1 --repeats 3 --json "$out/bench.jsonl" || failed+=("bench")
}

part_train() {
    heading "train: distill.py and joint_train.py end to end, and gradient caching"
    if ! "$PY" -c "import datasets" 2>/dev/null; then
        echo "skipped: the training scripts need the datasets package, which '$PY' cannot import"
        skipped+=("train (no datasets)")
        return
    fi
    deadline=$((SECONDS + limit_train))
    local t=$work/train status=0
    mkdir "$t"
    # Tiny BERTs (dropout on, as BERT's config has it) with a character-level vocabulary, and rows.
    name="tiny models: " limited "$PY" - "$t" "${models[@]}" <<'EOF' || { failed+=("train: models"); return; }
import json, sys
from pathlib import Path
import torch
from transformers import BertConfig, BertModel, BertTokenizer

work, hidden, layers, teacher_hidden, rows = Path(sys.argv[1]), *map(int, sys.argv[2:])
characters = list("abcdefghijklmnopqrstuvwxyz0123456789") + list("абвгдеёжзийклмнопрстуфхцчшщъыьэюя")
characters += list("的是水天气为什么")
vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + characters + ["##" + c for c in characters]
for name, width, depth, seed in (("teacher", teacher_hidden, 2, 1), ("student", hidden, layers, 2)):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=width, num_hidden_layers=depth, num_attention_heads=4,
                        intermediate_size=2 * width, max_position_embeddings=128)
    BertModel(config).save_pretrained(work / name)
    BertTokenizer(vocab={token: i for i, token in enumerate(vocab)}, model_max_length=128).save_pretrained(work / name)
words = ["water", "stone", "river", "cloud", "bread", "paper", "light", "glass", "metal", "green"]
with open(work / "rows.jsonl", "w", encoding="utf-8") as f:
    for i in range(rows):
        topic, row = f"{words[i % 10]} {words[i * 7 % 10]} {i}", {"id": f"r{i}"}
        for lang in ("en", "de", "ru", "zh"):
            row[f"query_{lang}"] = f"what about the {topic} in {lang}"
            row[f"passage_{lang}"] = f"the {topic} is described here in {lang}, with detail number {i * 7}"
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
print(f"tiny BERT student (hidden {hidden}, {layers} layers) and teacher (hidden {teacher_hidden}), {rows} rows")
EOF
    local flags=(--cache-dir "$t/cache" --log-every 1 --precision bf16 --max-steps "$steps" "${train[@]}")
    local distill=("${interpret[@]}" "$PY" distill.py --teacher "$t/teacher" --student "$t/student"
        --data "$t/rows.jsonl" "${flags[@]}")
    local joint=("${interpret[@]}" "$PY" joint_train.py --stage1 "$t/stage1" --data "$t/rows.jsonl"
        --mini-batch-size "$mini" "${flags[@]}")
    name="distill.py: " limited "${distill[@]}" --out-dir "$t/stage1" >>"$log" || status=1
    name="distill.py killed: " killed "$kill_after" "$t/stage1-resumed" "${distill[@]}" --out-dir "$t/stage1-resumed" ||
        status=1
    name="distill.py --resume: " limited "${distill[@]}" --out-dir "$t/stage1-resumed" --resume >>"$log" || status=1
    for impl in torch triton; do
        name="joint_train.py --loss-impl $impl: " limited "${joint[@]}" --out-dir "$t/joint-$impl" --loss-impl "$impl" \
            >>"$log" || status=1
    done
    name="joint_train.py killed: " killed "$kill_after" "$t/joint-resumed" "${joint[@]}" --out-dir "$t/joint-resumed" \
        --loss-impl torch || status=1
    name="joint_train.py --resume: " limited "${joint[@]}" --out-dir "$t/joint-resumed" --resume >>"$log" || status=1
    # the runs against each other, and loaded as a user would
    name="comparison: " limited "$PY" - "$t" "$steps" "${models[0]}" "$([ "$cuda" = 1 ] && echo cuda || echo cpu)" \
        <<'EOF' || status=1
import json, math, sys
from pathlib import Path
import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, AutoTokenizer

work, steps, hidden, device = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
# Two bf16 runs' loss curves agree within 2^-7, relative: two steps of bf16's 8 significant bits. The kernel is
# handed the embeddings rounded to bf16 where plain PyTorch keeps them in fp32, and the updates let such roundings
# drift. The first step after --resume repeats the uninterrupted run's from the same weights, optimizer state,
# batch and RNG states (so the same dropout masks): only non-deterministic reductions may tell them apart.
CURVE_TOLERANCE, RESUME_TOLERANCE = 2**-7, 1e-5
failed = []


def verdict(name, ok, detail):
    failed.extend([] if ok else [name])
    print(f"  {'PASS' if ok else 'FAIL'}  {name}: {detail}")


def logged(path):
    """{step: record} of the training steps in a log.jsonl, and the steps in the order logged."""
    records = []
    for line in Path(path).read_text().splitlines() if Path(path).is_file() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by the kill
            pass
    records = [record for record in records if "loss" in record]
    return {record["step"]: record for record in records}, [record["step"] for record in records]


def worst(a, b, keys, at):
    """The worst |a - b| / |b| of two runs' records over steps `at` and keys; inf where one lacks a value."""
    if any(key not in run.get(step, {}) for run in (a, b) for step in at for key in keys):
        return math.inf
    return max(abs(a[step][key] - b[step][key]) / max(abs(b[step][key]), 1e-12) for step in at for key in keys)


every = list(range(1, steps + 1))
runs = {impl: logged(work / f"joint-{impl}/log.jsonl")[0] for impl in ("torch", "triton")}
keys = [key for key in runs["torch"].get(1, {}) if key not in ("step", "lr", "grad_norm", "ex/s")]  # loss and terms
for script, whole, resumed, terms in (("distill.py", "stage1", "stage1-resumed", ["loss"]),
                                      ("joint_train.py", "joint-torch", "joint-resumed", keys)):
    paths = (f"{whole}/log.jsonl", f"{resumed}.killed.jsonl", f"{resumed}/log.jsonl")
    (whole, _), (killed, _), (resumed, order) = (logged(work / path) for path in paths)
    # --resume keeps the lines logged up to its checkpoint and logs the steps after it again: the first line
    # that differs from the killed run's (if only in its examples per second) is the first step it redid
    first = min((step for step in resumed if resumed[step] != killed.get(step)), default=None)
    verdict(f"{script} resume", order == every and first is not None, f"killed after step {max(killed, default='-')}, "
            f"resumed at step {first}: steps 1..{steps} logged once each")
    if first is not None:
        same, drift = worst(resumed, whole, terms, [first]), worst(resumed, whole, terms, range(first, steps + 1))
        verdict(f"{script} resume", same <= RESUME_TOLERANCE, f"step {first} repeats the uninterrupted run's: "
                f"relative difference {same:.1e} (tolerance {RESUME_TOLERANCE:.0e})")
        verdict(f"{script} resume", drift <= CURVE_TOLERANCE, f"steps {first}..{steps} within 2^-7 of the "
                f"uninterrupted run's: worst {drift:.1e}")

difference = worst(runs["triton"], runs["torch"], keys, every)
verdict("joint_train.py loss curves", difference <= CURVE_TOLERANCE and len(keys) > 1,
        f"--loss-impl triton against torch: worst relative difference {difference:.1e} (tolerance 2^-7)")

texts = ["what about the water stone 3 in de", "the river cloud 7 is described here in ru", "a", "glass"]
for name in ("stage1", "stage1-resumed", "joint-torch", "joint-triton", "joint-resumed"):
    model = SentenceTransformer(str(work / name), device=device)
    ours = model.encode(texts, convert_to_tensor=True).float().cpu()  # (4, H)
    tokenizer, backbone = AutoTokenizer.from_pretrained(work / name), AutoModel.from_pretrained(work / name)
    batch = tokenizer(texts, padding=True, truncation=True, max_length=model.max_seq_length, return_tensors="pt")
    with torch.no_grad():
        states = backbone(**batch).last_hidden_state  # (4, T, H)
    mask = batch["attention_mask"].unsqueeze(-1)  # (4, T, 1)
    mean = (states * mask).sum(1) / mask.sum(1)  # (4, H) mean pooling, the student's
    cosine = torch.cosine_similarity(ours, mean).min().item()
    verdict(f"{name} loads", cosine >= 0.9999 and backbone.config.hidden_size == hidden, "SentenceTransformer embeds as "
            f"AutoModel with mean pooling (least cosine {cosine:.6f}); hidden size {backbone.config.hidden_size}")
sys.exit(1 if failed else 0)
EOF
    [ "$status" = 0 ] || failed+=("train")
    name="gradient caching: " limited env "${test_device[@]}" "$PY" -m pytest tests/test_joint_train.py -q \
        --tb=line -rfEs -k gradient_cach || failed+=("train: gradient caching")
}

part_retrieval() {
    heading "retrieval: bench/bench_retrieval.py"
    deadline=$((SECONDS + limit_retrieval))
    limited "$PY" bench/bench_retrieval.py "${retrieval[@]}" >"$work/retrieval.txt"
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
"$PY" -c "import importlib.metadata as m, platform
print('python', platform.python_version(), *(f'| {p} {m.version(p)}' for p in ('torch', 'transformers',
      'sentence-transformers', 'numpy')))" || failed+=("versions")
for part in ${parts//,/ }; do
    "part_$part"
done

took="$((SECONDS - started)) s${skipped[*]:+; skipped: ${skipped[*]}}"
status=$((${#failed[@]} > 0))
if [ "$status" = 0 ]; then
    heading "all checks passed ($took)"
else
    heading "FAILED: $(IFS=';'; echo "${failed[*]}") ($took); log.txt has each command's output"
fi
exec >&- 2>&- 3>&-
wait "$tee_pid" 2>/dev/null
exit "$status"
