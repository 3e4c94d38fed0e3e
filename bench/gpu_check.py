"""
The checks behind bench/gpu_check.sh, one subcommand per part of its report. Each
prints its part on stdout (the training scripts' own output goes to stderr, the
log) and exits with status 1 if one of its checks failed.

    python bench/gpu_check.py machine                      # the GPU, versions, the bf16 matmul rate
    python bench/gpu_check.py kernel-check                 # the kernel against info_nce, B = 65,536, D = 1,024
    python bench/gpu_check.py sweep --json sweep.json      # the kernels' tiles, warps and stages
    python bench/gpu_check.py auto-table bench-oneway.jsonl bench-symmetric.jsonl
    python bench/gpu_check.py train --work /tmp/train      # distill.py and joint_train.py end to end

--smoke shrinks every size so that each part runs on a CPU in seconds; the kernels
then run through Triton's interpreter, which needs TRITON_INTERPRET=1 before
Python starts (gpu_check.sh sets it). Smoke numbers check that the code runs,
nothing more.
"""

import argparse
import contextlib
import functools
import importlib
import importlib.metadata
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # the repository's modules, and the tests' helpers
import losses  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SCALE = 20.0  # 1 / tau, the paper's
FAILED = []  # the checks that failed, for the exit status


def verdict(name, ok, detail):
    """One result line: PASS or FAIL, what was checked, and the numbers."""
    if not ok:
        FAILED.append(name)
    print(f"  {'PASS' if ok else 'FAIL'}  {name}: {detail}", flush=True)


def gpu_name():
    return torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else "CPU"


def sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def median_ms(fn, budget_s, warmup=1):
    """Median milliseconds of fn() after `warmup` untimed calls (compilation, allocator):
    as many calls as fit in budget_s, at least 2 and at most 20. CUDA events on a GPU,
    the wall clock elsewhere."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    while len(times) < 2 or (len(times) < 20 and sum(times) < budget_s * 1e3):
        if DEVICE.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            tick = time.perf_counter()
            fn()
            times.append((time.perf_counter() - tick) * 1e3)
    return statistics.median(times)


def first_line(error):
    """The error in one line for the report; the whole traceback goes to stderr, the log."""
    traceback.print_exception(error, file=sys.stderr)
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"[:200]


# ---------------------------------------------------------------------------
# machine: what the report was measured on


def version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine(args):
    packages = ("torch", "triton", "transformers", "sentence-transformers", "numpy")
    print(f"python {platform.python_version()} | " + " | ".join(f"{name} {version(name)}" for name in packages))
    if DEVICE.type != "cuda":
        print(f"no CUDA device: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores")
        return
    props = torch.cuda.get_device_properties(DEVICE)
    print(
        f"GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs, "
        f"compute capability {props.major}.{props.minor}, CUDA {torch.version.cuda}"
    )
    # The bf16 tensor-core rate on random data, the ceiling the benchmark's "of peak" divides by.
    a, b = (torch.randn(8192, 8192, device=DEVICE, dtype=torch.bfloat16) for _ in range(2))
    ms = median_ms(lambda: a @ b, budget_s=0.5, warmup=100)  # the warm-up also lifts the clocks from idle
    tflops = 2 * 8192**3 / (ms * 1e-3) / 1e12
    print(f"bf16 matmul, 8192 x 8192 x 8192 on random data: {tflops:.0f} TFLOP/s (median of {ms:.2f} ms)")
    if args.peak_file:
        Path(args.peak_file).write_text(f"{tflops:.0f}\n")


# ---------------------------------------------------------------------------
# kernel-check: the kernel against losses.info_nce at the largest batch


def kernel_extra_mib(B, D, dtype, symmetric):
    """Peak CUDA memory of the kernel's forward and backward beyond q, p (B, D) and their
    gradients, in MiB."""
    q = torch.randn(B, D, device=DEVICE).to(dtype).requires_grad_(True)
    p = torch.randn(B, D, device=DEVICE).to(dtype).requires_grad_(True)
    sync()
    torch.cuda.reset_peak_memory_stats(DEVICE)
    baseline = torch.cuda.memory_allocated(DEVICE)
    losses.info_nce_triton(q, p, SCALE, symmetric).backward()
    sync()
    gradients = q.grad.nbytes + p.grad.nbytes
    return (torch.cuda.max_memory_allocated(DEVICE) - baseline - gradients) / 2**20


def kernel_check(args):
    import test_kernels  # the tolerances and the comparison the tests use

    B, D = (96, 40) if args.smoke else (65536, 1024)
    print(
        f"losses.info_nce_triton against losses.info_nce at B = N = {B}, D = {D}, scale {SCALE:g}, on {DEVICE}: "
        "worst errors as fractions of tests/test_kernels.py's tolerances (<= 1 passes)"
    )
    for dtype, symmetric in ((torch.bfloat16, False), (torch.bfloat16, True), (torch.float32, False)):
        name = f"{str(dtype).removeprefix('torch.')} {'symmetric' if symmetric else 'one-way'}"
        torch.manual_seed(0)
        try:
            extra = kernel_extra_mib(B, D, dtype, symmetric) if DEVICE.type == "cuda" else None
            errors = test_kernels.reference_errors(losses.info_nce_triton, B, B, D, dtype, SCALE, symmetric, DEVICE)
        except Exception as error:  # out of memory, or the kernel failed to compile: say so, go on
            verdict(name, False, first_line(error))
            continue
        finally:
            if DEVICE.type == "cuda":
                torch.cuda.empty_cache()
        memory = f"; memory beyond inputs and gradients {extra:.0f} MiB" if extra is not None else ""
        text = ", ".join(f"{key} {value:.3f}" for key, value in errors.items())
        verdict(name, all(value <= 1 for value in errors.values()), text + memory)
        if extra is not None and dtype == torch.bfloat16 and not symmetric and not args.smoke:
            print(f"  target: under 1 GB (10^9 bytes) beyond inputs and gradients: {met(extra * 2**20 < 1e9)}")


# ---------------------------------------------------------------------------
# sweep: the kernels' tiles, warps and stages

# Candidates, written BLOCK_MxBLOCK_NxBLOCK_D/wWARPS/sSTAGES, taken from the Hopper
# settings of the Triton tutorials (triton-lang/triton, python/tutorials/):
# 03-matrix-multiplication.py's CUDA autotuning list for 16-bit inputs (its output
# tile is our score tile, its BLOCK_SIZE_K our BLOCK_D), and 06-fused-attention.py,
# whose forward tries 64/128 x 32/64/128 tiles with 2-4 stages and 4 or 8 warps (8
# warps on Hopper only for tiles of at least 128 x 128), and whose backward runs 4
# warps and 5 stages with a 128-wide side. The first of each is fused.py's setting.
FORWARD_CANDIDATES = [
    "128x64x64/w8/s3",  # fused.py's FORWARD
    "128x64x64/w4/s2",  # the attention tutorial's fixed test setting
    "128x128x64/w8/s3",  # attention forward, 8 warps from 128 x 128 up
    "128x256x64/w8/s3",  # the matmul tutorial's first
    "64x256x32/w4/s4",  # the matmul tutorial's second
    "128x128x32/w4/s4",  # the matmul tutorial's third
]
BACKWARD_CANDIDATES = [
    "128x64x64/w8/s2",  # fused.py's BACKWARD
    "128x64x64/w4/s2",  # the attention tutorial's fixed test setting
    "128x128x64/w8/s2",  # 8 warps from 128 x 128 up; a third fewer atomic adds per flop than 128 x 64
    "128x128x32/w8/s3",  # the matmul tutorial's 128 x 128 x 32: half the shared memory a stage
    "64x128x32/w4/s5",  # the attention backward's 4 warps and 5 stages, a 128-wide side; 32-wide D slices
]


def shape_key(B, D, symmetric=None):
    """'B2048-D1024' for the forward, '...-oneway' / '...-symmetric' for the backward."""
    return f"B{B}-D{D}" + ("" if symmetric is None else "-symmetric" if symmetric else "-oneway")


def shape_order(key):
    """Sort shape keys by B, then D, then one-way before symmetric."""
    parts = key.split("-")
    return int(parts[0][1:]), int(parts[1][1:]), parts[2:] == ["symmetric"]


def slowdowns(times):
    """times: {candidate: {shape: ms}}, a shape missing where that candidate failed.
    For each candidate measured on every shape: the geometric mean over the shapes of
    its time over the shape's best time (1.0: fastest everywhere)."""
    shapes = set().union(*(measured.keys() for measured in times.values()))
    best = {shape: min(measured[shape] for measured in times.values() if shape in measured) for shape in shapes}
    return {
        candidate: math.exp(statistics.fmean(math.log(measured[shape] / best[shape]) for shape in shapes))
        for candidate, measured in times.items()
        if shapes and set(measured) == shapes
    }


def valid_candidates(kernel, candidates, B, D):
    """The candidates (fused.Tiles) for `kernel` that run and give info_nce's loss and
    gradients within the tests' tolerances at B = N, D; the others are reported and left out."""
    import test_kernels

    import fused

    defaults, valid = (fused.FORWARD, fused.BACKWARD), []
    for text in candidates:
        tiles, worst = fused.Tiles.parse(text), 0.0
        try:
            for symmetric in (False, True) if kernel == "backward" else (False,):
                fused.configure(*((tiles, defaults[1]) if kernel == "forward" else (defaults[0], tiles)))
                errors = test_kernels.reference_errors(
                    losses.info_nce_triton, B, B, D, torch.bfloat16, SCALE, symmetric, DEVICE
                )
                worst = max(worst, *errors.values())
        except Exception as error:  # a candidate may not fit the GPU (shared memory, registers)
            print(f"  --    {kernel} {text}: left out, it does not run here: {first_line(error)}")
            continue
        finally:
            fused.configure(*defaults)
        # a candidate that runs but gives other results than info_nce is a bug in the kernels
        verdict(f"{kernel} {text}", worst <= 1, f"worst error {worst:.3f}" + ("" if worst <= 1 else ", left out"))
        if worst <= 1:
            valid.append(tiles)
    return valid


def time_shape(B, D, valid, times, deadline, smoke):
    """Time every valid candidate of both kernels at B = N, D into times[kernel][tiles][shape];
    False if the deadline passed first."""
    import fused

    torch.manual_seed(0)
    q, p = (torch.randn(B, D, device=DEVICE).to(torch.bfloat16) for _ in range(2))  # (B, D) each
    inv_q, inv_p = losses.inverse_norms(q), losses.inverse_norms(p)  # (B,) each
    lse, col_lse = fused.row_lse(q, p, inv_q, inv_p, SCALE), fused.row_lse(p, q, inv_p, inv_q, SCALE)  # (B,) each
    jobs = [("forward", shape_key(B, D), tiles) for tiles in valid["forward"]]
    for symmetric in (False, True):
        jobs += [("backward", shape_key(B, D, symmetric), tiles) for tiles in valid["backward"]]
    for kernel, key, tiles in jobs:
        if time.time() > deadline:
            return False
        if kernel == "forward":  # one pass; the symmetric loss runs two of this shape (N = B)
            run = functools.partial(fused.row_lse, q, p, inv_q, inv_p, SCALE, tiles)
        else:
            symmetric = key.endswith("-symmetric")
            run = functools.partial(fused.info_nce_bwd, q, p, inv_q, inv_p, lse, col_lse, SCALE, symmetric, tiles)
        try:
            times[kernel][str(tiles)][key] = median_ms(run, budget_s=0 if smoke else 0.2)
        except Exception as error:  # e.g. out of resources at this shape's specialisation
            print(f"  --    {kernel} {tiles} failed at {key}: {first_line(error)}")
    return True


def print_kernel_table(kernel, measured):
    """One row per candidate, one column per shape, each shape's fastest marked *; returns
    the candidate with the best geometric mean over the shapes (None if none ran on all)."""
    shapes = sorted(set().union(*(m.keys() for m in measured.values())), key=shape_order)
    if not shapes:
        print(f"{kernel} kernel: nothing measured")
        return None
    best = {shape: min(m[shape] for m in measured.values() if shape in m) for shape in shapes}
    scores = slowdowns(measured)
    width = max(len(shape) for shape in shapes) + 2
    print(f"{kernel} kernel, ms{' (one pass)' if kernel == 'forward' else ''}:")
    print(f"  {'tiles':<18}" + "".join(f"{shape:>{width}}" for shape in shapes) + "  geometric mean / best")
    for candidate, by_shape in measured.items():
        cells = "".join(
            f"{by_shape[shape]:>{width - 1}.3f}{'*' if by_shape[shape] == best[shape] else ' '}"
            if shape in by_shape
            else f"{'failed':>{width}}"
            for shape in shapes
        )
        print(f"  {candidate:<18}{cells}  {f'{scores[candidate]:.3f}' if candidate in scores else '-'}")
    if not scores:
        return None
    chosen = min(scores, key=scores.get)
    worst = max(measured[chosen][shape] / best[shape] for shape in shapes)
    print(f"  chosen: {chosen} (best geometric mean; at most {worst:.2f} x any shape's fastest)")
    return chosen


def print_step_table(times, chosen, shapes):
    """Per shape: the fastest forward (run twice when symmetric) plus the fastest backward,
    their TFLOP/s, and the same step with the chosen tiles."""
    print("a step's kernels per shape (forward + backward), fastest tiles and chosen tiles:")
    print(
        f"  {'B':>6} {'D':>5} {'loss':<9} {'forward':<18} {'backward':<18} {'ms':>9} {'TFLOP/s':>8} {'chosen ms':>10}"
    )
    for B, D in shapes:
        for symmetric in (False, True):
            f_ran = {c: m[shape_key(B, D)] for c, m in times["forward"].items() if shape_key(B, D) in m}
            key = shape_key(B, D, symmetric)
            b_ran = {c: m[key] for c, m in times["backward"].items() if key in m}
            if not f_ran or not b_ran:
                continue
            f_best, b_best = min(f_ran, key=f_ran.get), min(b_ran, key=b_ran.get)
            passes = 2 if symmetric else 1
            ms = passes * f_ran[f_best] + b_ran[b_best]
            matmuls = passes + 3  # B x N x D each: a forward pass; the backward's recompute, dq and dp
            tflops = matmuls * 2 * B * B * D / (ms * 1e-3) / 1e12
            with_chosen = passes * f_ran.get(chosen["forward"], math.nan) + b_ran.get(chosen["backward"], math.nan)
            direction = "symmetric" if symmetric else "one-way"
            print(
                f"  {B:>6} {D:>5} {direction:<9} {f_best:<18} {b_best:<18} {ms:>9.3f} {tflops:>8.1f}"
                f" {with_chosen:>10.3f}"
            )


def sweep(args):
    import fused

    start = time.time()
    count = 2 if args.smoke else None  # the smoke run: two candidates each
    candidates = {"forward": FORWARD_CANDIDATES[:count], "backward": BACKWARD_CANDIDATES[:count]}
    # the paper's D (1024, XLM-R large) first, so that the time budget spares it at B = 65,536
    batch_sizes, dims = ((64,), (48, 32)) if args.smoke else ((2048, 16384, 65536), (1024, 768))
    shapes = [(B, D) for B in batch_sizes for D in dims]
    print(
        f"tiles BLOCK_MxBLOCK_NxBLOCK_D/wWARPS/sSTAGES on {gpu_name()}, bf16, N = B, scale {SCALE:g}; "
        f"fused.py now: forward {fused.FORWARD}, backward {fused.BACKWARD}"
    )
    if DEVICE.type != "cuda":
        print("  (through Triton's CPU interpreter: these timings mean nothing; this checks that the sweep runs)")

    B, D = shapes[0]
    print(f"candidates against info_nce at B = N = {B}, D = {D} (worst error as a fraction of the tests' tolerances):")
    valid = {kernel: valid_candidates(kernel, candidates[kernel], B, D) for kernel in ("forward", "backward")}

    print(f"timing {len(shapes)} shapes, one-way and symmetric, at most {args.budget_s:.0f} s:")
    times = {kernel: {str(tiles): {} for tiles in valid[kernel]} for kernel in valid}
    for B, D in shapes:
        finished = time_shape(B, D, valid, times, start + args.budget_s, args.smoke)
        if DEVICE.type == "cuda":
            torch.cuda.empty_cache()
        if not finished:
            # a shape measured for some candidates only would bias the choice: drop it, stop
            for measured in (*times["forward"].values(), *times["backward"].values()):
                for key in (shape_key(B, D), shape_key(B, D, False), shape_key(B, D, True)):
                    measured.pop(key, None)
            print(f"  the time budget ran out at B {B}, D {D}: the choice rests on the shapes before it")
            break
        print(f"  B {B:>6} D {D:>5}: timed ({time.time() - start:.0f} s so far)")

    chosen = {kernel: print_kernel_table(kernel, times[kernel]) for kernel in ("forward", "backward")}
    if None in chosen.values():
        verdict("sweep", False, "no candidate ran on every shape of both kernels: nothing chosen")
    else:
        print_step_table(times, chosen, shapes)
        forward, backward = (fused.Tiles.parse(chosen[kernel]) for kernel in ("forward", "backward"))
        print("to make them fused.py's defaults (bench_losses.py below runs with them already):")
        for name, tiles in (("FORWARD", forward), ("BACKWARD", backward)):
            print(
                f"  {name} = Tiles({tiles.block_m}, {tiles.block_n}, {tiles.block_d}, warps={tiles.warps}, "
                f"stages={tiles.stages})  # bench/gpu_check.sh sweep, {gpu_name()}, {time.strftime('%Y-%m-%d')}"
            )
        if args.tiles_file:
            Path(args.tiles_file).write_text(f"{forward} {backward}\n")
    if args.json:
        record = {"device": gpu_name(), "times_ms": times, "chosen": chosen, "seconds": round(time.time() - start, 1)}
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")


# ---------------------------------------------------------------------------
# auto-table: the entries for losses.MEASURED_FASTEST, and the targets


def read_rows(paths):
    """bench_losses.py --json rows from the files that exist."""
    rows = []
    for path in paths:
        if Path(path).is_file():
            rows += [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return rows


def fastest_entries(rows):
    """{(gpu, B, D): (name, {impl: ms})}: the fastest of losses.INFO_NCE_IMPLS on the
    one-way rows, among those that fit in memory."""
    ran = {}
    for row in rows:
        if not row["symmetric"] and not row.get("oom") and row["impl"] in losses.INFO_NCE_IMPLS:
            ran.setdefault((row["gpu"], row["B"], row["D"]), {})[row["impl"]] = row["ms"]
    return {key: (min(by_impl, key=by_impl.get), by_impl) for key, by_impl in sorted(ran.items())}


def met(ok):
    return "met" if ok else "NOT met"


def target_lines(rows):
    """The kernel against the issue's targets, one line per shape (informational)."""
    by_shape = {}
    for row in rows:
        by_shape.setdefault((row["symmetric"], row["B"], row["D"]), {})[row["impl"]] = row
    lines = []
    for (symmetric, B, D), by_impl in sorted(by_shape.items()):
        kernel, lowp = by_impl.get("triton"), by_impl.get("torch-lowp")
        if kernel is None or kernel.get("oom"):
            continue
        facts = []
        if lowp is not None and not lowp.get("oom"):
            speedup = lowp["ms"] / kernel["ms"]
            needed = 1.5 if B >= 16384 else 1.0
            facts.append(f"{speedup:.2f} x torch-lowp's speed (target >= {needed:g}: {met(speedup >= needed)})")
        elif lowp is not None:
            facts.append("torch-lowp out of memory")
        if B >= 16384 and kernel.get("of_peak") is not None:
            share = kernel["of_peak"]
            facts.append(f"{share:.0%} of peak (target >= 40%: {met(share >= 0.4)})")
        if B == 65536 and D == 1024:
            under = kernel["extra_mib"] * 2**20 < 1e9
            facts.append(f"{kernel['extra_mib']:.0f} MiB beyond inputs and gradients (target < 1 GB: {met(under)})")
        direction = "symmetric" if symmetric else "one-way"
        lines.append(f"  {direction:<9} B {B:>6} D {D:>5}: triton {kernel['ms']:.3f} ms; " + "; ".join(facts))
    return lines


def auto_table(args):
    rows = read_rows(args.rows)
    if not rows:
        print("no bench_losses.py rows (it runs on a CUDA GPU only): losses.MEASURED_FASTEST stays as it is")
        return
    entries = fastest_entries(rows)
    print("entries for losses.MEASURED_FASTEST (--loss-impl auto), from the one-way rows above:")
    print("MEASURED_FASTEST = {")
    for (gpu, B, D), (name, by_impl) in entries.items():
        others = ", ".join(f"{impl} {ms:.3f}" for impl, ms in sorted(by_impl.items(), key=lambda item: item[1]))
        print(f"    ({json.dumps(gpu)}, {B}, {D}): {json.dumps(name)},  # ms: {others}")
    print("}")
    symmetric = {}
    for row in rows:
        if row["symmetric"] and not row.get("oom") and row["impl"] in losses.INFO_NCE_IMPLS:
            symmetric.setdefault((row["gpu"], row["B"], row["D"]), {})[row["impl"]] = row["ms"]
    for key, by_impl in sorted(symmetric.items()):
        if key in entries and len(by_impl) > 1 and min(by_impl, key=by_impl.get) != entries[key][0]:
            print(
                f"  note: for the symmetric loss at B {key[1]}, D {key[2]} {min(by_impl, key=by_impl.get)} was fastest"
            )
    print("the kernel against the targets (torch-lowp: plain PyTorch with bf16 scores):")
    for line in target_lines(rows):
        print(line)


# ---------------------------------------------------------------------------
# train: distill.py and joint_train.py end to end on a tiny BERT built here

# The training scripts' command lines, in one place: adjust here when their flags change.


def distill_argv(work, out_dir, size, *extra):
    return [
        "--teacher", str(work / "teacher"),
        "--student", str(work / "student"),
        "--data", str(work / "rows.jsonl"),
        "--out-dir", str(out_dir),
        "--cache-dir", str(work / "cache"),
        "--dev-size", str(size["dev"]),
        "--per-device-batch-size", str(size["batch"]),
        "--max-length", str(size["max_length"]),
        "--max-steps", str(size["steps"]),
        "--save-every", str(size["save_every"]),
        "--log-every", "1",
        "--precision", "bf16",
        *extra,
    ]  # fmt: skip


def joint_argv(work, out_dir, size, loss_impl, *extra):
    return [
        "--stage1", str(work / "stage1"),
        "--data", str(work / "rows.jsonl"),
        "--out-dir", str(out_dir),
        "--cache-dir", str(work / "cache"),
        "--dev-size", str(size["dev"]),
        "--per-device-batch-size", str(size["batch"]),
        "--mini-batch-size", str(size["mini_batch"]),
        "--max-length", str(size["max_length"]),
        "--max-steps", str(size["steps"]),
        "--save-every", str(size["save_every"]),
        "--log-every", "1",
        "--precision", "bf16",
        "--loss-impl", loss_impl,
        *extra,
    ]  # fmt: skip


# Where a run is cut short, as a kill would, to check --resume: the function each script
# calls at known points, and which call falls in the middle of step k.
INTERRUPT = {
    "distill": ("teacher_embed", lambda step: step + 1),  # call 1 embeds the dev set, call k + 1 is step k
    "joint_train": ("backward_through_cache", lambda step: 2 * step - 1),  # queries then passages, each step
}
SIZES = {
    "gpu": {"hidden": 256, "layers": 4, "teacher_hidden": 128, "rows": 600, "dev": 32, "batch": 512,
            "mini_batch": 64, "max_length": 64, "steps": 30, "save_every": 10, "interrupt_at": 15},
    "smoke": {"hidden": 32, "layers": 2, "teacher_hidden": 24, "rows": 40, "dev": 8, "batch": 16,
              "mini_batch": 4, "max_length": 32, "steps": 4, "save_every": 2, "interrupt_at": 3},
}  # fmt: skip
# Two bf16 runs' loss curves agree within 2^-7, relative: two steps of bf16's 8
# significant bits. The kernel is handed the embeddings rounded to bf16 where plain
# PyTorch keeps them in fp32, and 30 steps of updates let such roundings drift.
CURVE_TOLERANCE = 2**-7
# The first step after --resume repeats the uninterrupted run's step from the same
# weights, optimizer state, batch and RNG states (so the same dropout masks): only
# non-deterministic reductions may tell them apart.
RESUME_TOLERANCE = 1e-5
# Gradient caching against one graph through the whole batch, relative to each
# parameter's largest gradient: the same arithmetic summed in another order (fp32),
# or of contributions each rounded to bf16 under autocast.
GRAD_CACHE_TOLERANCE = {"fp32": 1e-4, "bf16": 2**-8}


def run_script(name, argv, interrupt_at=None):
    """name.main(argv) in this process, its console output sent to stderr (the log).
    interrupt_at: raise KeyboardInterrupt in the middle of that step, as a kill would.
    Returns the seconds it took, or None if it was to be interrupted and was not."""
    module = importlib.import_module(name)
    hook, call_of = INTERRUPT[name]
    real, calls = getattr(module, hook), []

    def interrupting(*args, **kwargs):
        calls.append(None)
        if interrupt_at is not None and len(calls) == call_of(interrupt_at):
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    setattr(module, hook, interrupting)
    tick = time.time()
    try:
        with contextlib.redirect_stdout(sys.stderr):
            module.main(argv)
    except KeyboardInterrupt:
        if interrupt_at is None:
            raise
        return time.time() - tick
    finally:
        setattr(module, hook, real)
    return None if interrupt_at is not None else time.time() - tick


def logged(out_dir):
    """{step: log record} of a run's training steps."""
    lines = (Path(out_dir) / "log.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    return {record["step"]: record for record in records if "loss" in record}


def relative_difference(a, b, keys, steps):
    """The worst |a - b| / |b| over the given steps and keys; inf where one run lacks a step."""
    if any(step not in a or step not in b for step in steps):
        return math.inf
    return max(abs(a[s][k] - b[s][k]) / max(abs(b[s][k]), 1e-12) for s in steps for k in keys)


def check_resume(name, whole_dir, resumed_dir, argv_of, size, keys):
    """Interrupt a run of `name` in the middle of a step, --resume it into resumed_dir, and
    compare it with the uninterrupted run in whole_dir. argv_of(out_dir, *extra) gives
    the command line."""
    step, every = size["interrupt_at"], size["save_every"]
    first = (step - 1) // every * every + 1  # the first step after the last checkpoint
    if run_script(name, argv_of(resumed_dir), interrupt_at=step) is None:
        verdict(f"{name}.py resume", False, f"the run was not interrupted in step {step}")
        return
    run_script(name, argv_of(resumed_dir, "--resume"))
    whole, resumed = logged(whole_dir), logged(resumed_dir)
    records = [json.loads(line) for line in (resumed_dir / "log.jsonl").read_text().splitlines()]
    steps = [record["step"] for record in records if "loss" in record]
    verdict(
        f"{name}.py resume",
        steps == sorted(whole) == list(range(1, size["steps"] + 1)),
        f"interrupted in step {step}, resumed from step {first - 1}: steps 1..{size['steps']} logged once each",
    )
    same = relative_difference(resumed, whole, keys, [first])
    verdict(
        f"{name}.py resume",
        same <= RESUME_TOLERANCE,
        f"step {first} repeats the uninterrupted run's: relative difference {same:.1e} "
        f"(tolerance {RESUME_TOLERANCE:.0e})",
    )
    drift = relative_difference(resumed, whole, keys, range(first, size["steps"] + 1))
    verdict(
        f"{name}.py resume",
        drift <= CURVE_TOLERANCE,
        f"steps {first}..{size['steps']} within 2^-7 of the uninterrupted run's: worst {drift:.1e}",
    )


def gradient_cache_check(work, size, precision):
    """Gradient caching (joint_train.embed_without_graph, backward_through_cache) against
    plain back-propagation through one graph over the whole batch, with dropout on.

    The plain side encodes the same mini-batches in the same order from the same RNG
    state, so its dropout masks are those pass 1 draws; pass 2 must replay them from the
    saved CPU and CUDA RNG states. A control runs pass 2 under other states (masks pass 1
    did not use): it must miss the tolerance, or the check could not fail."""
    import joint_train
    from losses import cosine_distill_loss, info_nce
    from model import Encoder

    amp = {"fp32": None, "bf16": torch.bfloat16}[precision]
    autocast = lambda: torch.autocast(DEVICE.type, dtype=amp or torch.float32, enabled=amp is not None)  # noqa: E731
    rows = [json.loads(line) for line in (work / "rows.jsonl").read_text().splitlines()][: size["batch"]]
    texts_q, texts_p = [row["query_de"] for row in rows], [row["passage_ru"] for row in rows]
    mini = size["mini_batch"]
    student = Encoder(str(work / "stage1"), max_length=size["max_length"]).to(DEVICE).train()
    torch.manual_seed(1)
    W = torch.nn.Linear(student.dim, 32, bias=False).to(DEVICE)  # (32, Ds) a projection to made-up targets
    t_q, t_p = torch.randn(len(rows), 32, device=DEVICE), torch.randn(len(rows), 32, device=DEVICE)

    def loss_of(q, p):  # the MIMO objective at lam 0.2
        distill = (cosine_distill_loss(W(q), t_q) + cosine_distill_loss(W(p), t_p)) / 2
        return 0.2 * info_nce(q, p, SCALE) + 0.8 * distill

    def gradients():
        out = {name: param.grad.clone() for name, param in student.named_parameters() if param.grad is not None}
        out["W"] = W.weight.grad.clone()
        student.zero_grad(set_to_none=True)
        W.zero_grad(set_to_none=True)
        return out

    def with_graph(texts):  # plain: one graph, encoded in the mini-batches the cache uses
        chunks = []
        for start in range(0, len(texts), mini):
            with autocast():
                chunks.append(losses.fp32(student.embed(texts[start : start + mini])))
        return torch.cat(chunks)

    def cached(replay):
        q, q_states = joint_train.embed_without_graph(student, texts_q, mini, autocast)
        p, p_states = joint_train.embed_without_graph(student, texts_p, mini, autocast)
        if not replay:  # the control: states from a further pass, so other dropout masks
            _, q_states = joint_train.embed_without_graph(student, texts_q, mini, autocast)
            _, p_states = joint_train.embed_without_graph(student, texts_p, mini, autocast)
        q, p = q.requires_grad_(True), p.requires_grad_(True)
        loss_of(q, p).backward()
        joint_train.backward_through_cache(student, texts_q, q.grad, q_states, mini, autocast)
        joint_train.backward_through_cache(student, texts_p, p.grad, p_states, mini, autocast)

    torch.manual_seed(2)
    start = (torch.get_rng_state(), torch.cuda.get_rng_state(DEVICE) if DEVICE.type == "cuda" else None)

    def from_start():
        torch.set_rng_state(start[0])
        if start[1] is not None:
            torch.cuda.set_rng_state(start[1], DEVICE)

    from_start()
    loss_of(with_graph(texts_q), with_graph(texts_p)).backward()
    plain = gradients()
    results = {}
    for replay in (True, False):
        from_start()
        cached(replay)
        got = gradients()
        if got.keys() != plain.keys() or len(plain) < 10:
            verdict(f"gradient cache, {precision}", False, "the two paths gave gradients to different parameters")
            return
        worst = {
            name: ((got[name] - plain[name]).abs().max() / plain[name].abs().max().clamp_min(1e-30)).item()
            for name in plain
        }
        results[replay] = max(worst.items(), key=lambda item: item[1])
    tolerance = GRAD_CACHE_TOLERANCE[precision]
    (name, error), (_, control) = results[True], results[False]
    verdict(
        f"gradient cache, {precision}",
        error <= tolerance < control,
        f"worst parameter {error:.1e} of its largest gradient ({name}; tolerance {tolerance:.1e}); "
        f"pass 2 under other RNG states: {control:.1e} (must exceed the tolerance)",
    )


def load_check(out_dir, dim):
    """The run loads in sentence-transformers and transformers, and embeds as Encoder does."""
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    from model import Encoder

    texts = ["what about the water stone 3 in de", "the river cloud 7 is described here in ru", "a", "glass"]
    ours = Encoder(str(out_dir)).to(DEVICE).encode(texts)  # (4, D) normalised, fp32
    theirs = SentenceTransformer(str(out_dir), device=str(DEVICE)).encode(texts, convert_to_tensor=True)
    cosine = (theirs.float().cpu() * ours).sum(-1).min().item()
    hidden = AutoModel.from_pretrained(str(out_dir)).config.hidden_size
    verdict(
        f"{out_dir.name} loads",
        cosine >= 0.9999 and hidden == dim and theirs.shape == ours.shape,
        f"SentenceTransformer embeds as Encoder.encode (least cosine {cosine:.6f}); AutoModel hidden size {hidden}",
    )


def train(args):
    from conftest import build_tiny_model, write_rows

    size = SIZES["smoke" if args.smoke else "gpu"]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    build_tiny_model(work / "student", hidden=size["hidden"], layers=size["layers"], seed=2)
    build_tiny_model(work / "teacher", hidden=size["teacher_hidden"], layers=2, seed=1)
    write_rows(work / "rows.jsonl", n=size["rows"])
    print(
        f"tiny BERT student (hidden {size['hidden']}, {size['layers']} layers, dropout 0.1) and teacher (hidden "
        f"{size['teacher_hidden']}), {size['rows']} rows in 4 languages, bf16 autocast on {DEVICE}"
    )

    seconds = run_script("distill", distill_argv(work, work / "stage1", size))  # work/stage1: joint_train's start
    log = logged(work / "stage1")
    print(
        f"distill.py: {size['steps']} steps of {size['batch']} pairs, {seconds:.1f} s; "
        f"loss {log[1]['loss']:.4f} at step 1, {log[size['steps']]['loss']:.4f} at step {size['steps']}"
    )
    argv_of = functools.partial(distill_argv, work)
    check_resume(
        "distill",
        work / "stage1",
        work / "stage1-resumed",
        lambda out, *extra: argv_of(out, size, *extra),
        size,
        ["loss"],
    )

    keys = ["loss", "xlco", "distill"]
    took = {}
    for impl in ("torch", "triton"):
        took[impl] = run_script("joint_train", joint_argv(work, work / f"joint-{impl}", size, impl))
    torch_log, triton_log = logged(work / "joint-torch"), logged(work / "joint-triton")
    print(
        f"joint_train.py (MIMO): {size['steps']} steps of {size['batch']} pairs in mini-batches of "
        f"{size['mini_batch']}, from the same start: --loss-impl torch {took['torch']:.1f} s, "
        f"triton {took['triton']:.1f} s"
    )
    print(f"  {'step':>4}" + "".join(f"{key + ' ' + impl:>16}" for key in keys for impl in ("torch", "triton")))
    steps = sorted(set(torch_log) & set(triton_log))
    for step in steps:
        if step % 5 == 0 or step == 1 or args.smoke:
            cells = "".join(f"{log[step][key]:>16.5f}" for key in keys for log in (torch_log, triton_log))
            print(f"  {step:>4}{cells}")
    worst = relative_difference(triton_log, torch_log, keys, steps)
    verdict(
        "joint_train.py loss curves",
        steps == list(range(1, size["steps"] + 1)) and worst <= CURVE_TOLERANCE,
        f"triton against torch, worst relative difference {worst:.1e} (loss, xlco, distill; tolerance 2^-7)",
    )
    argv_of = lambda out, *extra: joint_argv(work, out, size, "torch", *extra)  # noqa: E731
    check_resume("joint_train", work / "joint-torch", work / "joint-resumed", argv_of, size, keys)

    print(
        f"gradient caching against one graph through the whole batch, dropout on: {size['batch']} queries and "
        f"passages in mini-batches of {size['mini_batch']}, the MIMO loss"
    )
    for precision in ("fp32", "bf16"):
        gradient_cache_check(work, size, precision)

    print("the runs in sentence-transformers and transformers:")
    for name in ("stage1", "stage1-resumed", "joint-torch", "joint-triton", "joint-resumed"):
        load_check(work / name, size["hidden"])


# ---------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("machine", help="the GPU, versions and the measured bf16 matmul rate")
    command.add_argument("--peak-file", default=None, help="write the measured bf16 TFLOP/s here")
    command = commands.add_parser("kernel-check", help="the kernel against info_nce at B = 65,536, D = 1,024")
    command.add_argument("--smoke", action="store_true", help="small sizes, for a CPU")
    command = commands.add_parser("sweep", help="the kernels' tiles, warps and stages")
    command.add_argument("--smoke", action="store_true", help="small sizes and two candidates each, for a CPU")
    command.add_argument("--budget-s", type=float, default=110, help="stop timing after this many seconds")
    command.add_argument("--json", default=None, help="write every timing here")
    command.add_argument("--tiles-file", default=None, help="write the chosen forward and backward tiles here")
    command = commands.add_parser("auto-table", help="losses.MEASURED_FASTEST's entries from bench_losses --json")
    command.add_argument("rows", nargs="*", help="bench_losses.py --json files (missing ones are skipped)")
    command = commands.add_parser("train", help="distill.py and joint_train.py end to end on a tiny BERT")
    command.add_argument("--work", required=True, help="a folder for the models, data and runs")
    command.add_argument("--smoke", action="store_true", help="small sizes, for a CPU")
    args = parser.parse_args()
    {"machine": machine, "kernel-check": kernel_check, "sweep": sweep, "auto-table": auto_table, "train": train}[
        args.command
    ](args)
    if FAILED:
        print(f"failed: {', '.join(FAILED)}", flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
