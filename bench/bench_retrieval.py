"""
Time the exact top-k retrieval that evaluate.py ranks with (evaluate.retrieve) on a
synthetic corpus: N random normalised embeddings of dimension D, Q random queries,
top 100 each (as evaluate.py asks), for
N = 10^4, 10^5, 10^6. Prints queries per second and peak memory (on a GPU, CUDA's
max_memory_allocated; on CPU, the process's peak resident set size), and the hardware.

    python bench/bench_retrieval.py                          # Q = 10,000 on a GPU, 1,000 on CPU
    python bench/bench_retrieval.py --queries 200 --sizes 10000 100000

Each N runs in a fresh child process, so the peak memory printed is that N's own.
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root, for evaluate.py
import evaluate  # noqa: E402

DEPTH = 100  # documents evaluate.py retrieves per query


def get_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10**4, 10**5, 10**6], help="corpus sizes N to time")
    parser.add_argument(
        "--queries", type=int, default=None, help="queries Q per run; default: 10,000 on a GPU, 1,000 on CPU"
    )
    parser.add_argument("--dim", type=int, default=384, help="embedding dimension D (384: all-MiniLM-L6-v2)")
    parser.add_argument("--k", type=int, default=DEPTH, help="documents retrieved per query")
    parser.add_argument("--query-chunk", type=int, default=1024, help="as evaluate.py --query-chunk")
    parser.add_argument("--doc-chunk", type=int, default=65536, help="as evaluate.py --doc-chunk")
    parser.add_argument(
        "--only", type=int, default=None, help=argparse.SUPPRESS
    )  # internal: the child process for one N
    return parser.parse_args()


def hardware():
    cpu = platform.processor() or "unknown CPU"
    if Path("/proc/cpuinfo").is_file():
        names = [
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads), {gpu}, torch {torch.__version__}"


def random_unit_vectors(n, dim, device, generator_seed):
    """(n, dim) normalised Gaussian vectors, written in place chunk by chunk so that
    generating them does not double the peak memory being measured."""
    out = torch.empty(n, dim, device=device)
    generator = torch.Generator(device=device).manual_seed(generator_seed)
    for start in range(0, n, 65536):
        block = torch.randn(min(65536, n - start), dim, generator=generator, device=device)
        out[start : start + len(block)] = torch.nn.functional.normalize(block, dim=-1)
    return out


def run_one(n, args):
    """One corpus size, in this process: returns the measurements as a dict."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    queries = args.queries or (10_000 if device.type == "cuda" else 1_000)
    d = random_unit_vectors(n, args.dim, device, 0)  # (N, D)
    q = random_unit_vectors(queries, args.dim, device, 1)  # (Q, D)
    doc_rank = torch.arange(n, device=device)  # ids "0".."N-1" in index order: any permutation costs the same
    evaluate.retrieve(q[:8], d, doc_rank, args.k, args.query_chunk, args.doc_chunk)  # warm-up (kernels, allocator)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    tick = time.perf_counter()
    scores, index = evaluate.retrieve(
        q, d, doc_rank, args.k, args.query_chunk, args.doc_chunk
    )  # results land on CPU: synchronised
    seconds = time.perf_counter() - tick
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB
    return {
        "n": n,
        "queries": queries,
        "seconds": seconds,
        "qps": queries / seconds,
        "peak_gib": peak,
        "corpus_gib": n * args.dim * 4 / 2**30,
        "memory": "CUDA max allocated" if device.type == "cuda" else "peak RSS",
    }


def main():
    args = get_args()
    if args.only is not None:
        print(json.dumps(run_one(args.only, args)))
        return
    print(f"hardware: {hardware()}")
    print(f"D = {args.dim}, k = {args.k}, chunks {args.query_chunk} queries x {args.doc_chunk} documents")
    print(f"{'N':>10} {'queries':>8} {'seconds':>8} {'queries/s':>10} {'peak GiB':>9} {'corpus GiB':>11}  memory")
    for n in args.sizes:
        command = [
            sys.executable,
            __file__,
            "--only",
            str(n),
            "--dim",
            str(args.dim),
            "--k",
            str(args.k),
            "--query-chunk",
            str(args.query_chunk),
            "--doc-chunk",
            str(args.doc_chunk),
        ]
        if args.queries:
            command += ["--queries", str(args.queries)]
        child = subprocess.run(command, capture_output=True, text=True)
        if child.returncode != 0:
            print(
                f"{n:>10} failed: {child.stderr.strip().splitlines()[-1] if child.stderr.strip() else child.returncode}"
            )
            continue
        r = json.loads(child.stdout.strip().splitlines()[-1])
        print(
            f"{r['n']:>10} {r['queries']:>8} {r['seconds']:>8.2f} {r['qps']:>10.1f} {r['peak_gib']:>9.2f} "
            f"{r['corpus_gib']:>11.2f}  {r['memory']}"
        )


if __name__ == "__main__":
    main()
