"""
Speed and memory of the three InfoNCE implementations in losses.py:
plain info_nce, info_nce_chunked and the fused info_nce_triton, forward plus
backward, on one CUDA GPU.

    python bench/bench_losses.py                        # the full grid, bf16, N = B
    python bench/bench_losses.py --symmetric            # the two-way loss
    python bench/bench_losses.py --batch-sizes 4096 --dims 768 --impls triton

For each B in --batch-sizes and D in --dims it prints one row per
implementation: median milliseconds of forward + backward (CUDA events, after
warm-up), achieved TFLOP/s, its fraction of the GPU's dense bf16 peak, and peak
memory beyond the inputs and their gradients; "OOM" where it does not fit.

TFLOP/s counts 2 B N D per B x N x D matmul each implementation runs, the
backward's recomputes included: info_nce 3 (scores, dq, dp), info_nce_chunked 4
(scores, recomputed scores, dq, dp), info_nce_triton 4, plus B/N for the
symmetric loss's column pass. info_nce and info_nce_chunked upcast to fp32 and
use fp32 matmuls (TF32 with --tf32), so their fraction of the bf16 peak is low
by design; the kernel uses bf16 tensor cores. torch-lowp is the fair unfused
rival: plain PyTorch (normalise, matmul, cross-entropy) with bf16 operands and
bf16 scores, as most training code runs it. The kernel runs with fused.py's
FORWARD and BACKWARD tiles unless --forward-tiles / --backward-tiles name others
(bench/gpu_check.sh sweeps candidates and passes the best here); --json appends
each row to a file as one JSON object, for the --loss-impl auto table.
"""

import argparse
import importlib.metadata
import json
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere: losses.py is one level up
import losses  # noqa: E402

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from NVIDIA's data sheets,
# matched against torch.cuda.get_device_name() in this order (first match wins).
PEAK_BF16_TFLOPS = [
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # H100 SXM ("NVIDIA H100 80GB HBM3")
    ("H200", 989.0),  # same tensor cores as H100 SXM, more and faster memory
    ("GH200", 989.0),
    ("A100", 312.0),
]
MATMULS = {"torch": 3, "torch-lowp": 3, "chunked": 4, "triton": 4}  # B x N x D matmuls per step, one-way loss


def info_nce_lowp(q, p, scale=20.0, symmetric=False):
    """Plain PyTorch as most training code writes it in bf16: normalise and multiply in
    the input dtype (the (B, N) scores come out in bf16), cross-entropy on fp32 logits.
    The fastest unfused baseline, and less exact than losses.info_nce, which computes
    the scores in fp32; benchmarked only, never trained with."""
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


# ---------------------------------------------------------------------------
# arguments

parser = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0].strip(), formatter_class=argparse.ArgumentDefaultsHelpFormatter
)
parser.add_argument(
    "--batch-sizes",
    type=int,
    nargs="+",
    default=[1024, 4096, 16384, 65536],
    help="B, the number of queries; N = B passages",
)
parser.add_argument("--dims", type=int, nargs="+", default=[384, 768, 1024], help="D, the embedding width")
parser.add_argument(
    "--impls",
    nargs="+",
    default=["torch", "torch-lowp", "chunked", "triton"],
    choices=sorted(IMPLS),
    help="implementations to time (torch-lowp: plain PyTorch with scores in the input dtype)",
)
parser.add_argument(
    "--symmetric", action="store_true", help="time the symmetric (query->passage and passage->query) loss"
)
parser.add_argument("--scale", type=float, default=20.0, help="1 / tau, the InfoNCE scale")
parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="dtype of q and p")
parser.add_argument("--warmup", type=int, default=3, help="untimed runs first (compilation, autotuning, allocator)")
parser.add_argument("--repeats", type=int, default=10, help="timed runs; the median is reported")
parser.add_argument(
    "--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak; default: looked up from the device name"
)
parser.add_argument(
    "--forward-tiles",
    type=tiles,
    default=None,
    help="the forward kernel's BLOCK_MxBLOCK_NxBLOCK_D/wWARPS/sSTAGES; default: fused.FORWARD",
)
parser.add_argument(
    "--backward-tiles",
    type=tiles,
    default=None,
    help="the backward kernel's BLOCK_MxBLOCK_NxBLOCK_D/wWARPS/sSTAGES; default: fused.BACKWARD",
)
parser.add_argument("--json", default=None, help="also append each row to this file as one JSON object")
parser.add_argument(
    "--tf32",
    action="store_true",
    help="let the fp32 matmuls of info_nce and info_nce_chunked use TF32 (as Inf-CL does)",
)
args = parser.parse_args()

if not torch.cuda.is_available():
    sys.exit(
        "bench_losses.py needs a CUDA GPU (none found); on CPU run the correctness tests: pytest tests/test_kernels.py"
    )

# ---------------------------------------------------------------------------
# device, versions, peak

device = torch.device("cuda")
dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
torch.backends.cuda.matmul.allow_tf32 = args.tf32
gpu = torch.cuda.get_device_name(device)
peak = args.peak_tflops or next((tflops for key, tflops in PEAK_BF16_TFLOPS if key in gpu), None)
triton_version = importlib.metadata.version("triton") if losses.TRITON_INSTALLED else "not installed"
print(
    f"{gpu} | torch {torch.__version__} | CUDA {torch.version.cuda} | triton {triton_version} "
    f"| python {platform.python_version()}"
)
print(
    f"q, p {args.dtype}, N = B, scale {args.scale}, {'symmetric' if args.symmetric else 'one-way'}, "
    f"median of {args.repeats} after {args.warmup} warm-up; peak bf16 {peak or 'unknown (pass --peak-tflops)'} TFLOP/s"
)
if "triton" in args.impls and not losses.TRITON_INSTALLED:
    print("triton is not installed: skipping info_nce_triton (pip install triton)")
    args.impls = [impl for impl in args.impls if impl != "triton"]
if "triton" in args.impls:
    import fused

    fused.configure(args.forward_tiles, args.backward_tiles)
    print(f"triton tiles: forward {fused.FORWARD}, backward {fused.BACKWARD}")


# ---------------------------------------------------------------------------
# one measurement


def step(fn, q, p):
    """One training step's worth of the loss: forward and backward into q and p."""
    q.grad = p.grad = None
    loss = fn(q, p, args.scale, args.symmetric)
    loss.backward()
    return loss


def measure(fn, B, D):
    """(median ms, extra peak MiB, loss) of forward + backward, or None when out of memory."""
    torch.manual_seed(0)  # the same q and p for every implementation: the loss column cross-checks them
    q = torch.randn(B, D, device=device).to(dtype).requires_grad_(True)
    p = torch.randn(B, D, device=device).to(dtype).requires_grad_(True)
    try:
        for _ in range(args.warmup):
            step(fn, q, p)
        q.grad = p.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)  # q and p
        step(fn, q, p)
        torch.cuda.synchronize()
        grads = (q.numel() + p.numel()) * q.element_size()  # q.grad and p.grad, kept after the step
        extra_mib = (torch.cuda.max_memory_allocated(device) - baseline - grads) / 2**20
        times = []
        for _ in range(args.repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            loss = step(fn, q, p)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return sorted(times)[len(times) // 2], extra_mib, loss.item()
    except torch.cuda.OutOfMemoryError:
        return None
    finally:
        del q, p
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------
# the grid


def record(row):
    """Append one row of the table to --json, with what it was measured on."""
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps({"gpu": gpu, "dtype": args.dtype, "symmetric": args.symmetric, **row}) + "\n")


print(f"\n{'impl':>8} {'B':>6} {'D':>5} {'ms':>10} {'TFLOP/s':>8} {'of peak':>8} {'extra MiB':>10} {'loss':>9}")
for D in args.dims:
    for B in args.batch_sizes:
        for impl in args.impls:
            result = measure(IMPLS[impl], B, D)
            if result is None:
                print(f"{impl:>8} {B:>6} {D:>5} {'OOM':>10}")
                record({"impl": impl, "B": B, "D": D, "oom": True})
                continue
            ms, extra_mib, loss = result
            N = B  # passages: one positive per query, no extra negatives
            matmuls = MATMULS[impl] + (B / N if args.symmetric and impl == "triton" else 0)  # + column pass
            tflops = matmuls * 2 * B * N * D / (ms * 1e-3) / 1e12
            fraction = f"{tflops / peak:8.1%}" if peak else f"{'-':>8}"
            print(f"{impl:>8} {B:>6} {D:>5} {ms:>10.2f} {tflops:>8.1f} {fraction} {extra_mib:>10.0f} {loss:>9.4f}")
            of_peak = tflops / peak if peak else None
            record(
                {
                    "impl": impl,
                    "B": B,
                    "D": D,
                    "ms": ms,
                    "tflops": tflops,
                    "of_peak": of_peak,
                    "extra_mib": extra_mib,
                    "loss": loss,
                }
            )
