"""
Speed, memory and correctness of losses.py's InfoNCE implementations (info_nce,
info_nce_chunked and the fused info_nce_triton), forward plus backward, N = B.

    python bench/bench_losses.py                  # the full grid, bf16, on a CUDA GPU
    python bench/bench_losses.py --symmetric      # the two-way loss; --symmetric both: both losses
    python bench/bench_losses.py --batch-sizes 4096 --dims 768 --impls triton
    python bench/bench_losses.py --sweep --check  # choose the kernel's tiles first; check against info_nce

One row per implementation, B and D: median milliseconds of forward + backward (CUDA
events, after warm-up), TFLOP/s and its fraction of a bf16 matmul measured at start
(or --peak-tflops), and peak memory beyond the inputs and their gradients ("OOM" where
it does not fit). TFLOP/s counts 2 B N D per B x N x D matmul run, recomputes included:
info_nce 3 (scores, dq, dp), info_nce_chunked 4 (scores twice), info_nce_triton 4, plus
1 for the kernel's column pass of the symmetric loss. info_nce and info_nce_chunked use
fp32 matmuls (TF32 with --tf32), so their share of the bf16 rate is low by design;
torch-lowp is the fair unfused rival, plain PyTorch with bf16 scores as most training
code runs it.

--check compares each of losses.INFO_NCE_IMPLS's loss and gradients with info_nce's on
the same inputs (info_nce_chunked's where info_nce does not fit) as fractions of
tests/test_kernels.py's tolerances; one over 1 makes the exit status 1. --sweep first
times the kernel under each candidate tiling of one of its two kernels (the other at
fused.py's) over the grid, one-way and symmetric, and keeps each kernel's best geometric
mean of time over each shape's fastest. bf16 one-way rows of two or more implementations
end in the entries for losses.MEASURED_FASTEST (--loss-impl auto) and the kernel's
targets. --device cpu, the kernel through Triton's interpreter (TRITON_INTERPRET=1),
checks that this runs (bench/gpu_check.sh --smoke); its timings mean nothing.
"""

import argparse
import importlib.metadata
import itertools
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
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere: losses.py is one level up
import losses  # noqa: E402

MATMULS = {"torch": 3, "torch-lowp": 3, "chunked": 4, "triton": 4}  # B x N x D matmuls per step, one-way loss
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# tests/test_kernels.py's tolerances (its docstring derives them), copied since bench imports no tests:
# the loss within 1e-6 (scale + |loss|), gradient row i within rtol max|grad| + 2e-7 scale^2 / (B ||x_i||).
GRAD_RTOL = {torch.float32: 2e-5, torch.bfloat16: 2**-6, torch.float16: 2**-8}
# --sweep's candidates, written BLOCK_MxBLOCK_NxBLOCK_D/wWARPS/sSTAGES, from the Hopper
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


def info_nce_lowp(q, p, scale=20.0, symmetric=False):
    """Plain PyTorch as most training code writes it in bf16: the (B, N) scores in the input
    dtype, cross-entropy on fp32 logits. The fastest unfused baseline, less exact than
    losses.info_nce (fp32 scores); benchmarked only, never trained with."""
    scores = (F.normalize(q, dim=-1) @ F.normalize(p, dim=-1).T).float() * scale  # (B, N)
    target = torch.arange(q.shape[0], device=q.device)
    loss = F.cross_entropy(scores, target)
    if symmetric:
        loss = (loss + F.cross_entropy(scores[:, : q.shape[0]].T, target)) / 2
    return loss


IMPLS = {**losses.INFO_NCE_IMPLS, "torch-lowp": info_nce_lowp}


def tiles(text):
    """--forward-tiles / --backward-tiles: fused.Tiles from its written form, 128x64x64/w8/s3."""
    if not losses.TRITON_INSTALLED:
        raise argparse.ArgumentTypeError("the kernel's tiles need Triton, which is not installed")
    import fused  # imports Triton

    try:
        return fused.Tiles.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def get_args(argv=None):
    formatter = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=formatter)
    add = parser.add_argument
    add("--batch-sizes", type=int, nargs="+", default=[1024, 4096, 16384, 65536], help="B queries; N = B passages")
    add("--dims", type=int, nargs="+", default=[384, 768, 1024], help="D, the embedding width")
    add("--impls", nargs="+", default=["torch", "torch-lowp", "chunked", "triton"], choices=sorted(IMPLS),
        help="what to time; torch-lowp: plain PyTorch with bf16 scores")  # fmt: skip
    add("--symmetric", nargs="?", const="only", choices=["only", "both"], help="the two-way loss; both: both losses")
    add("--scale", type=float, default=20.0, help="1 / tau, the InfoNCE scale")
    add("--dtype", nargs="+", default=["bf16"], choices=sorted(DTYPES), help="dtypes of q and p")
    add("--warmup", type=int, default=3, help="untimed runs first: compilation, allocator")
    add("--repeats", type=int, default=10, help="timed runs; the median is reported")
    add("--peak-tflops", type=float, help="what 'of peak' divides by; default: a bf16 matmul measured at start")
    add("--check", action="store_true", help="check each one's loss and gradients against info_nce's")
    add("--sweep", action="store_true", help="first choose the kernel's tiles, warps and stages")
    add("--sweep-budget-s", type=float, default=110, help="the sweep times shapes for this long")
    add("--forward-tiles", type=tiles, help="the forward kernel's tiles, like 128x64x64/w8/s3; default fused.py's")
    add("--backward-tiles", type=tiles, help="the backward kernel's tiles; default fused.py's")
    add("--json", help="also append each row to this file as one JSON object")
    add("--tf32", action="store_true", help="let info_nce's and info_nce_chunked's fp32 matmuls use TF32 (Inf-CL)")
    add("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: checks that this runs; times mean nothing")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------
# one measurement


def median_ms(fn, repeats, device):
    """Median milliseconds of `repeats` calls of fn: CUDA events on a GPU, the wall clock on a CPU."""
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
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


def random_pair(B, D, dtype, device):
    """q (B, D) and p (B, D) drawn as tests/test_kernels.py draws them: norms from 0.5 to 3.5
    (so the norm's gradient matters) and p[i] somewhat closer to q[i] than the negatives, a
    loss of order 1. Seeded, so every implementation sees the same q and p."""
    torch.manual_seed(0)
    q = torch.randn(B, D, device=device) * (0.5 + 3 * torch.rand(B, 1, device=device))
    p = torch.randn(B, D, device=device) * (0.5 + 3 * torch.rand(B, 1, device=device)) + 0.25 * q
    return q.to(dtype).requires_grad_(True), p.to(dtype).requires_grad_(True)


def step(fn, q, p, scale, symmetric):
    """One training step's worth of the loss: forward and backward into q.grad and p.grad."""
    q.grad = p.grad = None
    loss = fn(q, p, scale, symmetric)
    loss.backward()
    return loss


def measure(fn, q, p, scale, symmetric, warmup, repeats):
    """fn's forward + backward on q, p: (median ms, peak MiB beyond q, p and their gradients
    (None on a CPU), loss, dq, dp), or None where it does not fit in memory."""
    cuda = q.device.type == "cuda"
    try:
        for _ in range(warmup):
            step(fn, q, p, scale, symmetric)
        q.grad = p.grad = None
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated() if cuda else 0  # q, p and what the caller holds
        loss = step(fn, q, p, scale, symmetric).item()  # .item() waits for the step
        dq, dp = q.grad, p.grad
        extra_mib = (torch.cuda.max_memory_allocated() - baseline - dq.nbytes - dp.nbytes) / 2**20 if cuda else None
        ms = median_ms(lambda: step(fn, q, p, scale, symmetric), repeats, q.device)
        return ms, extra_mib, loss, dq, dp
    except torch.cuda.OutOfMemoryError:
        return None
    finally:
        q.grad = p.grad = None
        if cuda:
            torch.cuda.empty_cache()


def reference(q, p, scale, symmetric):
    """(name, measure()) of info_nce on q, p, or of info_nce_chunked where info_nce does
    not fit (tests/test_kernels.py checks that the two agree); None if neither fits."""
    for fn in (losses.info_nce, losses.info_nce_chunked):
        result = measure(fn, q, p, scale, symmetric, warmup=0, repeats=1)
        if result is not None:
            return fn.__name__, result
    return None


def check_error(result, want, q, p, scale):
    """The worst of result's loss, dq and dp against want's (both from measure()), each as a
    fraction of its tolerance (GRAD_RTOL): <= 1 passes; inf where one is not finite."""
    loss, dq, dp = result[2:]
    errors = [abs(loss - want[2]) / (1e-6 * (scale + abs(want[2])))]
    for got, expected, x in ((dq, want[3], q), (dp, want[4], p)):
        if got.dtype != x.dtype or got.shape != x.shape:
            return math.inf
        unit = scale / (q.shape[0] * x.detach().float().norm(dim=-1, keepdim=True))  # (R, 1) a row's natural size
        allowed = GRAD_RTOL[x.dtype] * expected.float().abs().max() + 2e-7 * scale * unit  # (R, 1)
        errors.append(((got.float() - expected.float()).abs() / allowed).max().item())
    return max(errors) if all(math.isfinite(error) for error in errors) else math.inf


def record(args, row):
    """Append one row to --json."""
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(row) + "\n")


# ---------------------------------------------------------------------------
# --sweep: the kernels' tiles, warps and stages


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


def run_candidate(kernel, text, q, p, symmetric, args):
    """measure() of the kernel with `text` tiles for `kernel` (the other as it is); why not, where it fails."""
    import fused

    tiling = fused.Tiles.parse(text)
    previous = fused.configure(*((tiling, None) if kernel == "forward" else (None, tiling)))
    try:
        return measure(losses.info_nce_triton, q, p, args.scale, symmetric, args.warmup, args.repeats) or "OOM"
    except Exception as error:  # a candidate may not fit the GPU (shared memory, registers)
        traceback.print_exception(error, file=sys.stderr)
        return f"{type(error).__name__}: {error}".splitlines()[0][:200]
    finally:
        fused.configure(*previous)


def sweep(args, device, gpu, shapes, failed):
    """Time the kernel under each candidate tiling of one kernel at every shape, one-way and
    symmetric, and make each kernel's best fused.py's for the rest of the run. Candidates
    are checked against info_nce at the first shape (--check checks the chosen ones at
    all); one that fails to run or to match is left out. Where the budget runs out, so
    is the shape at hand: timed for some candidates only, it would bias the choice."""
    import fused

    count = 2 if device.type == "cpu" else None  # the interpreter is slow: two candidates each
    times = {("forward", text): {} for text in FORWARD_CANDIDATES[:count]}
    times |= {("backward", text): {} for text in BACKWARD_CANDIDATES[:count]}  # {(kernel, tiles): {shape: ms}}
    deadline = time.time() + args.sweep_budget_s
    print(f"sweep: the kernel under each candidate of one kernel, the other at forward {fused.FORWARD}, backward "
          f"{fused.BACKWARD}; bf16, one-way and symmetric, at most {args.sweep_budget_s:.0f} s")  # fmt: skip
    for (B, D), symmetric in itertools.product(shapes, (False, True)):
        key, out = f"B{B}-D{D}-{'symmetric' if symmetric else 'one-way'}", False
        q, p = random_pair(B, D, torch.bfloat16, device)
        want = reference(q, p, args.scale, symmetric) if (B, D) == shapes[0] else None
        for kernel, text in list(times):
            if out := time.time() > deadline:
                break
            result = run_candidate(kernel, text, q, p, symmetric, args)
            if not isinstance(result, tuple):
                print(f"  --    {kernel} {text} left out: it does not run at {key}: {result}")
                del times[kernel, text]
                continue
            if want is not None:  # one that runs but gives other results than info_nce is a bug in the kernels
                error = check_error(result, want[1], q, p, args.scale)
                print(f"  {'PASS' if error <= 1 else 'FAIL'}  {kernel} {text} against {want[0]} at {key}: worst error "
                      f"{error:.3f} of the tolerance")  # fmt: skip
                if error > 1:
                    failed.append(f"sweep {kernel} {text}")
                    del times[kernel, text]
                    continue
            times[kernel, text][key] = result[0]
            record(args, {"gpu": gpu, "sweep": kernel, "tiles": text, "B": B, "D": D, "symmetric": symmetric,
                          "ms": result[0]})  # fmt: skip
        del q, p, want
        if out:
            for measured in times.values():
                measured.pop(f"B{B}-D{D}-one-way", None), measured.pop(f"B{B}-D{D}-symmetric", None)
            print(f"  the time budget ran out at B {B}, D {D}: the choice rests on the shapes before it")
            break
        if symmetric:
            print(f"  B {B:>6} D {D:>5}: timed")
    chosen = {}
    for (kernel, text), score in sorted(slowdowns(times).items(), key=lambda item: (item[0][0], item[1])):
        print(f"  {kernel:<8} {text:<18} geometric mean of its time / each shape's fastest: {score:.3f}")
        chosen.setdefault(kernel, fused.Tiles.parse(text))
    if len(chosen) < 2:
        failed.append("sweep")
        print("  FAIL  sweep: no candidate ran on every shape of both kernels: nothing chosen; fused.py's tiles stay")
        return
    fused.configure(chosen["forward"], chosen["backward"])
    print("chosen: the best of each; to make them fused.py's defaults (the table below runs with them):")
    for name, best in (("FORWARD", chosen["forward"]), ("BACKWARD", chosen["backward"])):
        print(f"  {name} = Tiles({best.block_m}, {best.block_n}, {best.block_d}, warps={best.warps}, "
              f"stages={best.stages})  # bench_losses.py --sweep, {gpu}, {time.strftime('%Y-%m-%d')}")  # fmt: skip


# ---------------------------------------------------------------------------
# the entries for losses.MEASURED_FASTEST, and the targets


def fastest_entries(rows, symmetric=False):
    """{(gpu, B, D): (fastest, {impl: ms})} of losses.INFO_NCE_IMPLS where two or more ran, bf16 rows."""
    ran = {}
    for row in rows:
        if row["symmetric"] == symmetric and row["dtype"] == "bf16" and row["impl"] in losses.INFO_NCE_IMPLS:
            if not row.get("oom"):
                ran.setdefault((row["gpu"], row["B"], row["D"]), {})[row["impl"]] = row["ms"]
    return {key: (min(by_impl, key=by_impl.get), by_impl) for key, by_impl in sorted(ran.items()) if len(by_impl) > 1}


def target_lines(rows):
    """The kernel against the issue's targets, one line per bf16 shape (informational)."""
    met = lambda ok: "met" if ok else "NOT met"
    by_shape = {}
    for row in rows:
        if row["dtype"] == "bf16":
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
        if B == 65536 and D == 1024 and kernel.get("extra_mib") is not None:
            under = kernel["extra_mib"] * 2**20 < 1e9
            facts.append(f"{kernel['extra_mib']:.0f} MiB beyond inputs and gradients (target < 1 GB: {met(under)})")
        direction = "symmetric" if symmetric else "one-way"
        lines.append(f"  {direction:<9} B {B:>6} D {D:>5}: triton {kernel['ms']:.3f} ms; " + "; ".join(facts))
    return lines


def print_entries(rows):
    entries = fastest_entries(rows)
    print("entries for losses.MEASURED_FASTEST (--loss-impl auto), from the bf16 one-way rows:")
    print("MEASURED_FASTEST = {")
    for (gpu, B, D), (name, by_impl) in entries.items():
        others = ", ".join(f"{impl} {ms:.3f}" for impl, ms in sorted(by_impl.items(), key=lambda item: item[1]))
        print(f"    ({json.dumps(gpu)}, {B}, {D}): {json.dumps(name)},  # ms: {others}")
    print("}")
    for (gpu, B, D), (name, _) in fastest_entries(rows, symmetric=True).items():
        if (gpu, B, D) in entries and name != entries[gpu, B, D][0]:
            print(f"  note: for the symmetric loss at B {B}, D {D} {name} was fastest")
    print("the kernel against the targets (torch-lowp: plain PyTorch with bf16 scores):")
    for line in target_lines(rows):
        print(line)


# ---------------------------------------------------------------------------


def table_row(args, impl, dtype, symmetric, q, p, want, gpu, peak, failed):
    """Time impl on q, p, print its row of the table and return it, with its error against
    want (reference()) where there is one."""
    (B, D), direction = q.shape, "symmetric" if symmetric else "one-way"
    row = {"gpu": gpu, "dtype": dtype, "symmetric": symmetric, "impl": impl, "B": B, "D": D}
    start = f"{impl:>10} {dtype:>5} {direction:>9} {B:>6} {D:>5}"
    result = measure(IMPLS[impl], q, p, args.scale, symmetric, args.warmup, args.repeats)
    if result is None:
        print(f"{start} {'OOM':>10}")
        return {**row, "oom": True}
    ms, extra_mib, loss = result[:3]
    matmuls = MATMULS[impl] + (1 if symmetric and impl == "triton" else 0)  # + the kernel's column pass
    tflops = matmuls * 2 * B * B * D / (ms * 1e-3) / 1e12
    of_peak = tflops / peak if peak else None
    row.update(ms=ms, tflops=tflops, of_peak=of_peak, extra_mib=extra_mib, loss=loss)
    check = ""
    if want is not None and impl in losses.INFO_NCE_IMPLS:  # torch-lowp is inexact by design
        row["error"] = check_error(result, want[1], q, p, args.scale)
        check = f"  {row['error']:.3f} {'ok' if row['error'] <= 1 else 'FAIL'}"
        if row["error"] > 1:
            failed.append(f"{impl} {dtype} {direction} B {B} D {D}")
    print(f"{start} {ms:>10.2f} {tflops:>8.1f} {f'{of_peak:.1%}' if peak else '-':>8} "
          f"{'-' if extra_mib is None else f'{extra_mib:.0f}':>10} {loss:>9.4f}{check}")  # fmt: skip
    return row


# ---------------------------------------------------------------------------


def main(argv=None):
    args = get_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: bench_losses.py needs a CUDA GPU (none found); on CPU run the correctness tests: pytest "
                 "tests/test_kernels.py (--device cpu only checks that this script runs)")  # fmt: skip
    cuda = device.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    gpu = torch.cuda.get_device_name(device) if cuda else "CPU"  # the name losses.MEASURED_FASTEST is keyed by
    triton_version = importlib.metadata.version("triton") if losses.TRITON_INSTALLED else "not installed"
    print(f"{gpu} | torch {torch.__version__} | CUDA {torch.version.cuda} | triton {triton_version} "
          f"| python {platform.python_version()}")  # fmt: skip
    peak = args.peak_tflops
    if cuda:
        props = torch.cuda.get_device_properties(device)
        print(f"{props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs, compute capability "
              f"{props.major}.{props.minor}")  # fmt: skip
        # The bf16 tensor-core rate on random data, which "of peak" divides by. The warm-up lifts the clocks from idle.
        a, b = (torch.randn(8192, 8192, device=device, dtype=torch.bfloat16) for _ in range(2))
        median_ms(lambda: a @ b, 100, device)
        measured = 2 * 8192**3 / (median_ms(lambda: a @ b, 20, device) * 1e-3) / 1e12
        print(f"bf16 matmul, 8192 x 8192 x 8192 on random data: {measured:.0f} TFLOP/s")
        peak = peak or measured
        del a, b
    else:
        print(f"on the CPU ({platform.machine()}, {os.cpu_count()} cores): these timings mean nothing")
    reason = losses.triton_unavailable(device) if "triton" in args.impls or args.sweep else None
    if reason:
        print(f"skipping info_nce_triton and --sweep: {reason}")
        args.impls, args.sweep = [impl for impl in args.impls if impl != "triton"], False
    directions = {None: [False], "only": [True], "both": [False, True]}[args.symmetric]
    shapes = [(B, D) for D in args.dims for B in args.batch_sizes]
    failed = []
    if "triton" in args.impls or args.sweep:
        import fused

        fused.configure(args.forward_tiles, args.backward_tiles)
        if args.sweep:
            sweep(args, device, gpu, shapes, failed)
        print(f"triton tiles: forward {fused.FORWARD}, backward {fused.BACKWARD}")
    print(f"N = B, scale {args.scale:g}, median of {args.repeats} after {args.warmup} warm-up; 'of peak' divides "
          f"by {f'{peak:.0f} TFLOP/s' if peak else '- (no GPU)'}"
          + ("; check: worst error against info_nce / its tolerance" if args.check else ""))  # fmt: skip

    rows = []
    print(f"\n{'impl':>10} {'dtype':>5} {'direction':>9} {'B':>6} {'D':>5} {'ms':>10} {'TFLOP/s':>8} {'of peak':>8} "
          f"{'extra MiB':>10} {'loss':>9}{'  check' if args.check else ''}")  # fmt: skip
    for dtype, symmetric, D, B in itertools.product(args.dtype, directions, args.dims, args.batch_sizes):
        q, p = random_pair(B, D, DTYPES[dtype], device)
        want = reference(q, p, args.scale, symmetric) if args.check else None
        if args.check and want is None:
            failed.append(f"{dtype} B {B} D {D}: neither info_nce nor info_nce_chunked fits in memory")
        elif want is not None and want[0] != "info_nce":
            print(f"  (B {B}, D {D}: info_nce does not fit in memory; checked against {want[0]})")
        for impl in args.impls:
            rows.append(table_row(args, impl, dtype, symmetric, q, p, want, gpu, peak, failed))
            record(args, rows[-1])
        del q, p, want
    if fastest_entries(rows):
        print()
        print_entries(rows)
    if failed:
        print(f"failed: {'; '.join(failed)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
