"""
Paper scale, rehearsed on this machine: synthetic data of the paper's shape on
disk, each training script run for a few steps on tiny models the bench builds,
and per phase the seconds and the memory, for one process and for two under
torchrun (gloo, CPU).

    python bench/bench_scale.py                 # the paper's sizes (~7 min on 2 CPU cores)
    python bench/bench_scale.py --scale 0.002   # the same, 500x smaller (~1 min; the test runs a smaller one)

Data (generated once into --work-dir, reused while --scale and --seed stay):
- stage 1: 13 languages of parallel sentences in sentence-transformers' collection
  layout (two collections, parallel-sentences-europarl and -wikimatrix, parquet),
  enough that each language reaches the 500k cap after the length filters and
  English de-duplication across languages; lengths like OPUS (log-normal, median
  70 characters, Chinese and Japanese about half as many characters);
- stage 2: 532k aligned rows in 14 languages, MS MARCO-like: queries of ~35
  characters, passages of ~350 (log-normal), one parquet file.
Texts are random letters of each language's script, so tokenizers see real
byte widths (1 byte a character for Latin, 2 for Cyrillic and Arabic, 3 for
Devanagari and CJK).

Runs: distill.py with the paper preset's data rules (global de-duplication, the
first pairs per language, missing configs skipped) then joint_train.py (MIMO,
from that stage-1 run) for --steps steps each, 32 examples a step, a dev set of
1000. Stage 2 runs cold (rows converted into datasets' Arrow cache, then checked) and
warm (that conversion mapped, then checked again), each with one process, and warm with
two. The runs share one datasets cache (HF_DATASETS_CACHE), emptied when the bench starts.

Phases are measured inside the scripts by wrapping the functions that bound them
(data.load_parallel, data.split_dev, data.load_rows, ...), so the scripts run
unchanged. Memory is sampled every 20 ms from /proc: RSS (what top shows, shared
file pages included), private (anonymous memory: this process's own) and PSS
(shared pages divided among the processes mapping them; summed over processes
it is their real total).
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from anywhere: the scripts are one level up

STAGE1_LANGUAGES = "ar de es fr hi id it ja nl pt ru vi zh".split()  # the paper's 13, English as the anchor
STAGE2_LANGUAGES = ["en"] + STAGE1_LANGUAGES
PAPER_PAIRS_PER_LANGUAGE = 500_000
PAPER_ROWS = 532_000
GIB = 1 << 30


# ---------------------------------------------------------------------------
# Synthetic text


def script(*ranges):
    """Code points of a script (inclusive ranges), as a uint32 array."""
    return np.concatenate([np.arange(start, stop + 1, dtype=np.uint32) for start, stop in ranges])


LATIN = script((0x61, 0x7A), (0xE0, 0xEF))  # a-z and a few accented letters (2 bytes in UTF-8)
SCRIPTS = {
    "ar": script((0x627, 0x64A)),
    "hi": script((0x905, 0x939)),
    "ja": script((0x3041, 0x3093), (0x4E00, 0x4E63)),  # hiragana and 100 kanji
    "ru": script((0x430, 0x44F)),
    "zh": script((0x4E00, 0x4F2B)),  # 300 hanzi
}
CHARACTERS_PER_ENGLISH_CHARACTER = {"ja": 0.5, "zh": 0.45}  # others about 1


def lognormal_lengths(rng, n, median_chars, sigma, min_chars=1):
    """(n,) int64 text lengths in characters, log-normal around median_chars."""
    return np.maximum(rng.lognormal(np.log(median_chars), sigma, n).astype(np.int64), min_chars)


def random_texts(rng, lengths, lang):
    """Texts of random letters in lang's script with the given lengths (characters) -> pyarrow strings.

    Built straight into Arrow buffers, vectorised: code points -> UTF-8 bytes in one
    encode, text boundaries from each character's byte width; no Python string per text.
    """
    import pyarrow as pa

    alphabet = SCRIPTS.get(lang, LATIN)
    codes = alphabet[rng.integers(0, len(alphabet), int(lengths.sum()))]  # (C,) code points
    if lang not in ("ja", "zh"):
        codes[rng.integers(0, 6, len(codes), dtype=np.uint8) == 0] = 0x20  # a space every ~6 characters
    data = codes.astype("<u4").tobytes().decode("utf-32-le").encode("utf-8")
    width = (1 + (codes >= 0x80) + (codes >= 0x800)).astype(np.uint8)  # UTF-8 bytes per character
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    offsets = np.concatenate([[0], np.cumsum(np.add.reduceat(width, starts, dtype=np.int64))]).astype(np.int32)
    return pa.StringArray.from_buffers(len(lengths), pa.py_buffer(offsets), pa.py_buffer(data))


def generate_stage1(root, pairs_per_language, rng):
    """Parallel sentences for STAGE1_LANGUAGES in two collections (europarl, then
    wikimatrix, the preset's corpus order), 2/5 of each language in the first. Per
    language 10% more pairs than the cap: ~2% fail the length-ratio filter, a few the
    10-512 character one, and 4% repeat an English sentence of the previous language,
    which global de-duplication drops."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    n = int(pairs_per_language * 1.1) + 20
    previous = None
    for lang in STAGE1_LANGUAGES:
        english = random_texts(rng, lognormal_lengths(rng, n, 70, 0.6), "en")
        if previous is not None:  # every 25th pair takes an English sentence of the previous language
            source = np.arange(n)
            borrowed = rng.choice(n, n // 25, replace=False)
            source[borrowed] = n + rng.integers(0, len(previous), len(borrowed))
            english = pc.take(pa.concat_arrays([english, previous]), source)
        english_chars = pc.utf8_length(english).to_numpy()
        factor = CHARACTERS_PER_ENGLISH_CHARACTER.get(lang, 1.0) * rng.uniform(0.8, 1.25, n)
        factor[rng.integers(0, 50, n) == 0] *= 0.2  # 2% far shorter than their English: the ratio filter's
        text = random_texts(rng, np.maximum((english_chars * factor).astype(np.int64), 1), lang)
        first = 2 * n // 5
        for corpus, part in (("europarl", slice(0, first)), ("wikimatrix", slice(first, n))):
            folder = root / f"parallel-sentences-{corpus}" / f"en-{lang}"
            folder.mkdir(parents=True, exist_ok=True)
            table = pa.table({"english": english[part], "non_english": text[part]})
            pq.write_table(table, folder / "train-00000-of-00001.parquet", row_group_size=100_000)
        previous = english
    for corpus in ("global-voices", "jw300", "news-commentary", "opensubtitles", "talks", "tatoeba"):
        (root / f"parallel-sentences-{corpus}").mkdir(exist_ok=True)  # present, holding none of these configs


def generate_stage2(path, rows, rng):
    """Aligned rows (id, query_<lang>, passage_<lang> for STAGE2_LANGUAGES) as one parquet
    file, written 65,536 rows at a time: queries ~35 characters, passages ~350."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer = None
    for start in range(0, rows, 65_536):
        n = min(65_536, rows - start)
        columns = {"id": pa.array([f"q{i}" for i in range(start, start + n)])}
        for lang in STAGE2_LANGUAGES:
            factor = CHARACTERS_PER_ENGLISH_CHARACTER.get(lang, 1.0)
            columns[f"query_{lang}"] = random_texts(rng, lognormal_lengths(rng, n, 33 * factor, 0.4, 8), lang)
            columns[f"passage_{lang}"] = random_texts(rng, lognormal_lengths(rng, n, 330 * factor, 0.35, 40), lang)
        table = pa.table(columns)
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    writer.close()


# ---------------------------------------------------------------------------
# Tiny models


def build_tiny_model(path, hidden, seed):
    """A randomly initialised 2-layer BERT whose character-level WordPiece vocabulary
    covers every script the data uses; returns the path as a string."""
    import torch
    import transformers
    from transformers import BertConfig, BertModel, BertTokenizer

    transformers.utils.logging.disable_progress_bar()
    path.mkdir(parents=True, exist_ok=True)
    characters = [chr(c) for c in np.concatenate([LATIN, *SCRIPTS.values()])]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + characters + ["##" + c for c in characters]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(vocab_file=str(path / "vocab.txt"), model_max_length=512)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=2 * hidden,
        max_position_embeddings=512,
    )
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


# ---------------------------------------------------------------------------
# Inside a training process: phase marks and memory samples


def read_memory():
    """This process's memory now, in bytes: rss, private (anonymous) and pss."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    pss = 0
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            pss = int(line.split()[1]) * 1024
    return {"rss": fields["VmRSS"], "private": fields["RssAnon"], "pss": pss, "hwm": fields["VmHWM"]}


class Probe:
    """Phases as intervals between marks, each with its seconds and the peak memory
    seen in it (a sampler thread reads /proc every 20 ms, and every mark reads it too)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.last = time.perf_counter()
        self.phases = []
        self.peak = read_memory()
        threading.Thread(target=self.sample_forever, daemon=True).start()

    def sample(self):
        now = read_memory()
        with self.lock:
            self.peak = {key: max(self.peak[key], now[key]) for key in now}
        return now

    def sample_forever(self):
        while True:
            self.sample()
            time.sleep(0.02)

    def mark(self, label, **extra):
        """Close the phase that ends now; a mark repeating the previous label extends that phase."""
        current, now = self.sample(), time.perf_counter()
        with self.lock:
            phase = {"phase": label, "seconds": now - self.last, **self.peak, **extra}
            if self.phases and self.phases[-1]["phase"] == label:
                previous = self.phases.pop()
                merged = {key: max(phase[key], previous[key]) for key in ("rss", "private", "pss", "hwm")}
                phase = {**phase, **merged, "seconds": phase["seconds"] + previous["seconds"]}
            self.phases.append(phase)
            self.peak, self.last = current, now


def wrap_after(module, name, on_return):
    """Replace module.name by a function that calls it, then on_return(call number)."""
    import functools

    real = getattr(module, name)
    calls = [0]

    @functools.wraps(real)
    def wrapper(*args, **kwargs):
        result = real(*args, **kwargs)
        calls[0] += 1
        on_return(calls[0])
        return result

    setattr(module, name, wrapper)
    return real


def worker(stage, report_dir, argv):
    """Run distill.py or joint_train.py's main(argv) in this process with phase marks, then
    write rank<r>.json. The scripts are unchanged: the marks wrap the functions that end
    each phase, looked up through their modules at call time."""
    import torch

    import checkpoint
    import data

    probe = Probe()
    script = __import__("distill" if stage == "stage1" else "joint_train")
    reading = [0.0]

    real_source = data.read_parallel_source

    def timed_source(spec):  # the time spent inside the source generators: reading and parsing
        items = real_source(spec)
        while True:
            start = time.perf_counter()
            item = next(items, None)
            reading[0] += time.perf_counter() - start
            if item is None:
                return
            yield item

    data.read_parallel_source = timed_source
    wrap_after(
        data, "load_parallel", lambda n: probe.mark("read sources, filter, de-duplicate, cap", reading=reading[0])
    )
    wrap_after(data, "split_dev", lambda n: probe.mark("dev split"))
    real_load_rows = data.load_rows

    def load_rows(spec, *args, **kwargs):
        import datasets

        # datasets renames a conversion into its cache folder once it is complete
        cached = Path(datasets.load_dataset_builder("parquet", data_files=[spec]).cache_dir).is_dir()
        rows = real_load_rows(spec, *args, **kwargs)
        probe.mark("map cached rows, check columns" if cached else "read, validate, convert rows")
        return rows

    data.load_rows = load_rows
    wrap_after(data, "require_languages", lambda n: probe.mark("language checks"))
    wrap_after(data, "subset", lambda n: probe.mark("dev split"))
    wrap_after(checkpoint, "load_model", lambda n: probe.mark("load models"))
    teacher = {"texts": 0, "seconds": 0.0}
    real_embed = script.teacher_embed

    def teacher_embed(teacher_model, cache, texts, *args, **kwargs):
        start, todo = time.perf_counter(), len(cache.missing(texts))
        result = real_embed(teacher_model, cache, texts, *args, **kwargs)
        teacher["texts"] += todo
        teacher["seconds"] += time.perf_counter() - start
        return result

    script.teacher_embed = teacher_embed
    real_evaluate = script.evaluate_dev
    evaluations = [0]

    def evaluate_dev(*args, **kwargs):
        first = evaluations[0] == 0
        probe.mark("teacher cache: key, fill for the dev sample" if first else "training steps after the first")
        result = real_evaluate(*args, **kwargs)
        evaluations[0] += 1
        probe.mark("dev evaluation before training" if first else "dev evaluation after training")
        return result

    script.evaluate_dev = evaluate_dev
    steps = [0]
    real_step = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        result = real_step(self, *args, **kwargs)
        steps[0] += 1
        if steps[0] == 1:
            probe.mark("first step (epoch order, teacher targets, forward, backward, update)", teacher=dict(teacher))
        return result

    torch.optim.AdamW.step = step
    rank = int(os.environ.get("RANK", 0))

    def report():
        probe.mark("save" if rank else "save (rank 0 writes)")
        hwm = read_memory()["hwm"]
        (Path(report_dir) / f"rank{rank}.json").write_text(json.dumps({"phases": probe.phases, "hwm": hwm}))

    real_shutdown = checkpoint.shutdown
    checkpoint.shutdown = lambda: (report(), real_shutdown())  # under torchrun the process ends in shutdown()
    script.main(argv)


# ---------------------------------------------------------------------------
# The bench: data, runs, tables


def hardware():
    """One line on the machine: CPU model, cores this process may use, memory, versions."""
    import pyarrow
    import torch

    cpu = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
        platform.processor(),
    )
    memory = next(int(line.split()[1]) * 1024 for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    return (
        f"{cpu}, {len(os.sched_getaffinity(0))} cores usable, {memory / GIB:.0f} GiB memory, {platform.system()} "
        f"{platform.release()}; Python {platform.python_version()}, torch {torch.__version__}, "
        f"pyarrow {pyarrow.__version__}"
    )


def run(stage, processes, script_args, report_dir, data_cache):
    """One training run in fresh processes (torchrun for more than one): (reports by rank, seconds)."""
    shutil.rmtree(report_dir, ignore_errors=True)
    report_dir.mkdir(parents=True)
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    command = [*launcher, str(Path(__file__).resolve()), "--worker", stage, "--report", str(report_dir)]
    command += ["--", *script_args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["HF_DATASETS_CACHE"] = str(data_cache)
    if processes > 1:
        env["OMP_NUM_THREADS"] = str(max(len(os.sched_getaffinity(0)) // processes, 1))
    start = time.time()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"error: {stage} with {processes} process(es) failed:\n{result.stderr[-4000:]}")
    reports = [json.loads((report_dir / f"rank{rank}.json").read_text()) for rank in range(processes)]
    return reports, time.time() - start, result.stdout


def gib(value):
    return f"{value / GIB:6.2f}"


def print_run(title, reports, seconds, stdout):
    """The script's data line, then a table: a row per phase, for each rank its seconds
    and peak RSS, private and PSS."""
    print(f"\n{title} ({seconds:.0f} s in all, startup included)")
    for line in stdout.splitlines():
        if line.startswith("data: "):
            print(f"  {line}")
    header = "".join(f" | rank {rank}: s      RSS  private   PSS" for rank in range(len(reports)))
    print(f"{'phase':64s}{header}")
    labels = []
    for report in reports:
        labels += [phase["phase"] for phase in report["phases"] if phase["phase"] not in labels]
    for label in labels:
        cells = ""
        for report in reports:
            phase = next((phase for phase in report["phases"] if phase["phase"] == label), None)
            if phase is None:
                cells += f" | {'-':>8s} {'':26s}"
                continue
            cells += f" | {phase['seconds']:8.1f} {gib(phase['rss'])} {gib(phase['private'])} {gib(phase['pss'])}"
        extra = next((phase for report in reports for phase in report["phases"] if phase["phase"] == label), {})
        note = f" (reading {extra['reading']:.0f} s)" if "reading" in extra else ""
        if "teacher" in extra:
            note = f" ({extra['teacher']['texts']} teacher texts, {extra['teacher']['seconds']:.1f} s)"
        print(f"{(label + note)[:64]:64s}{cells}")
    hwm = "".join(f" | peak RSS of rank {rank}: {gib(report['hwm'])} GiB" for rank, report in enumerate(reports))
    print(f"{'whole run':64s}{hwm}")


def phase(reports, label, rank=0):
    return next(p for p in reports[rank]["phases"] if p["phase"] == label)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the paper's sizes (1: 500k, 532k)")
    parser.add_argument("--work-dir", default=str(ROOT / "runs" / "bench_scale"), help="data, models and runs")
    parser.add_argument("--steps", type=int, default=2, help="training steps per run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    parser.add_argument("--dev-size", type=int, default=1000, help="dev sentences (stage 1) and rows (stage 2)")
    parser.add_argument("--one-process", action="store_true", help="skip the runs with two processes")
    parser.add_argument("--worker", choices=["stage1", "stage2"], help=argparse.SUPPRESS)
    parser.add_argument("--report", help=argparse.SUPPRESS)
    parser.add_argument("script_args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.report, args.script_args)

    import data

    pairs_per_language = max(int(PAPER_PAIRS_PER_LANGUAGE * args.scale), 200)
    rows = max(int(PAPER_ROWS * args.scale), 1000)
    work = Path(args.work_dir)
    # what this script deletes (old data, old runs) lies only inside a work folder it made and marked itself
    if work.is_dir() and any(work.iterdir()) and not (work / ".mimo-bench-scale").is_file():
        sys.exit(f"error: --work-dir '{work}' holds files bench_scale.py did not make; choose another --work-dir")
    work.mkdir(parents=True, exist_ok=True)
    (work / ".mimo-bench-scale").write_text("bench_scale.py's work folder: data, models and runs it may delete\n")
    print(f"hardware: {hardware()}")
    print(f"sizes: stage 1 {len(STAGE1_LANGUAGES)} languages x {pairs_per_language:,} pairs + as many identity pairs,")
    print(f"       stage 2 {rows:,} rows x {len(STAGE2_LANGUAGES)} languages")

    # --- data and models, generated once per (scale, seed)
    data_dir = work / f"data-{pairs_per_language}-{rows}-{args.seed}"
    if not (data_dir / "complete").is_file():
        shutil.rmtree(data_dir, ignore_errors=True)
        start, rng = time.time(), np.random.default_rng(args.seed)
        generate_stage1(data_dir / "collections", pairs_per_language, rng)
        print(f"generated stage-1 data in {time.time() - start:.0f} s")
        start = time.time()
        generate_stage2(data_dir / "rows.parquet", rows, rng)
        print(f"generated stage-2 data in {time.time() - start:.0f} s")
        build_tiny_model(data_dir / "teacher", hidden=32, seed=1)
        build_tiny_model(data_dir / "student", hidden=24, seed=2)
        (data_dir / "complete").write_text("")
    stage1_bytes = sum(p.stat().st_size for p in (data_dir / "collections").rglob("*.parquet"))
    stage2_bytes = (data_dir / "rows.parquet").stat().st_size
    print(f"on disk: stage 1 {stage1_bytes / GIB:.2f} GiB of parquet, stage 2 {stage2_bytes / GIB:.2f} GiB")
    sources = data.parallel_sentences_sources(STAGE1_LANGUAGES, str(data_dir / "collections"))
    runs = work / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    common = [
        "--max-steps",
        str(args.steps),
        "--log-every",
        "1",
        "--save-every",
        "1000",
        "--dev-size",
        str(args.dev_size),
    ]
    process_counts = [1] if args.one_process else [1, 2]

    # --- stage 1
    stage1 = {}
    for processes in process_counts:
        out = runs / f"stage1-{processes}"
        script_args = [
            *("--teacher", str(data_dir / "teacher"), "--student", str(data_dir / "student")),
            *("--data", *sources, "--skip-missing-configs", "--dedupe", "global", "--sample", "first"),
            *("--max-per-language", str(pairs_per_language), "--per-device-batch-size", "32", "--max-length", "32"),
            *("--eval-batch-size", "256", "--teacher-batch-size", "256", *common),
            *("--out-dir", str(out), "--cache-dir", str(out) + "-teacher-cache"),
        ]
        stage1[processes] = run("stage1", processes, script_args, runs / f"report-stage1-{processes}", runs / "cache")
        title = f"stage 1, distill.py, {processes} process{'es' if processes > 1 else ''}"
        print_run(title, *stage1[processes])

    # --- stage 2: cold (conversion), warm, warm with two processes
    stage2 = {}
    for name, processes in [("cold", 1), ("warm", 1)] + ([("warm", 2)] if 2 in process_counts else []):
        out = runs / f"stage2-{name}-{processes}"
        script_args = [
            *("--stage1", str(runs / "stage1-1"), "--data", str(data_dir / "rows.parquet")),
            *("--per-device-batch-size", "32", "--mini-batch-size", "16", "--max-length", "64", *common),
            *("--out-dir", str(out), "--cache-dir", str(out) + "-teacher-cache"),
        ]
        stage2[name, processes] = run(
            "stage2", processes, script_args, runs / f"report-{name}-{processes}", runs / "cache"
        )
        title = f"stage 2, joint_train.py, {name} data cache, {processes} process{'es' if processes > 1 else ''}"
        print_run(title, *stage2[name, processes])

    # --- against the targets
    load = phase(stage1[1][0], "read sources, filter, de-duplicate, cap")
    kept = len(STAGE1_LANGUAGES) * pairs_per_language + pairs_per_language
    print("\ntargets")
    print(
        f"  stage 1: read, filter, de-duplicate {kept:,} pairs: {load['seconds']:.0f} s "
        "(target at paper scale: < 300 s)"
    )
    cold = phase(stage2["cold", 1][0], "read, validate, convert rows")
    warm = phase(stage2["warm", 1][0], "map cached rows, check columns")
    print(
        f"  stage 2: load {rows:,} rows: {cold['seconds']:.0f} s converting, {warm['seconds']:.1f} s mapped "
        f"(target < 120 s); peak RSS of the process {gib(stage2['cold', 1][0][0]['hwm'])} GiB (target < 6 GiB)"
    )
    if ("warm", 2) in stage2:
        one = stage2["warm", 1][0][0]["hwm"]
        two = [report["hwm"] for report in stage2["warm", 2][0]]
        pss_one = max(p["pss"] for p in stage2["warm", 1][0][0]["phases"])
        pss_two = sum(max(p["pss"] for p in report["phases"]) for report in stage2["warm", 2][0])
        print(
            f"  stage 2, second process: peak RSS {gib(one)} GiB alone, {' and '.join(gib(h) for h in two)} GiB "
            f"as two; PSS (shared pages split between the processes) {gib(pss_one)} GiB alone, {gib(pss_two)} GiB "
            f"for both: the second adds {gib(pss_two - pss_one)} GiB = {(pss_two - pss_one) / pss_one:.0%} "
            f"(target well under 50%)"
        )


if __name__ == "__main__":
    main()
