"""The memory-bounded InfoNCE implementations against losses.info_nce.

info_nce_chunked and info_nce_triton must give info_nce's loss and both input
gradients for awkward shapes (B = 1, 7, 129, 1000; D = 3, 64, 384, 1000; more
passages than queries), scales 20 and 100, one-way and symmetric, fp32 and bf16.

Tolerances, and why:
- Loss, every dtype: |got - want| <= 1e-6 * (scale + |want|). All three compute
  the scores in fp32 (bf16 inputs are upcast exactly, and bf16 x bf16 products
  are exact in fp32), so they differ by summation order only: a few 2^-24 of
  the largest possible score, scale, and of the loss itself.
- Gradients: |got - want| <= rtol * max|want| + 2e-7 * scale * scale / (B ||x_i||)
  per entry of row i. scale / (B ||x_i||) is the size of row i's gradient when
  its softmax is spread out. Two correct fp32 computations of a score (at most
  scale) can differ by a few 2^-24 * scale; softmax turns that into the same
  relative error in P_ij, an absolute one in P_ii - 1, which is all that is
  left of the gradient when the positive takes almost all the mass: there
  neither side has correct digits beyond this floor. rtol per dtype:
  fp32 2e-5: summation order only (measured up to 5e-6 on CPU; margin for
  the GPU's summation orders, not measured here);
  bf16 2^-6: both gradients end rounded to bf16 (8 significant bits) from fp32
  values that differ slightly, so they can land one bf16 step apart, 2^-7 of
  the entry; the Triton backward also rounds dL/dS to bf16 for its tensor-core
  dots, 2^-9 of each term, and the positive's term can be most of the sum.
  Measured up to 3.7e-3 (chunked) and 1.0e-2 (Triton, interpreter).
  fp16 2^-8: the same with 11 significant bits (measured up to 8e-4).

The Triton kernels run on CUDA when there is a GPU (all shapes) and, on every
machine with Triton, through Triton's CPU interpreter in a subprocess (the
smaller shapes): TRITON_INTERPRET=1 must be set before triton is imported,
and another test module may have imported losses already in this process.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import losses

ROOT = Path(__file__).resolve().parent.parent

# (B, N, D): every B in {1, 7, 129, 1000} with every D in {3, 64, 384, 1000}, N = B
# or more passages than queries. B = 1 always has extra passages: with N = 1 the
# loss and both gradients are exactly 0, which would test nothing.
SHAPES = [
    (1, 6, 3), (1, 9, 64), (1, 2, 384), (1, 17, 1000),
    (7, 7, 3), (7, 20, 64), (7, 7, 384), (7, 50, 1000),
    (129, 129, 3), (129, 300, 64), (129, 129, 384), (129, 200, 1000),
    (1000, 1000, 3), (1000, 1100, 64), (1000, 1000, 384), (1000, 1300, 1000),
]  # fmt: skip
# (B, N, D, dtype, scale, symmetric): every shape with fp32 and bf16, scales 20 and 100,
# one-way and symmetric.
CASES = [
    (B, N, D, dtype, scale, symmetric)
    for B, N, D in SHAPES
    for dtype in (torch.float32, torch.bfloat16)
    for scale in (20.0, 100.0)
    for symmetric in (False, True)
]
# Triton's interpreter is slow: the shapes up to B = 129 and D = 384, plus one fp16 case.
INTERPRETER_CASES = [case for case in CASES if case[0] <= 129 and case[2] <= 384]
INTERPRETER_CASES.append((129, 300, 64, torch.float16, 20.0, True))
# Run again with other tiles than fused.py's (forward, backward): smaller than the shapes,
# so many programs and partial tiles; the results must not depend on the tiles.
OTHER_TILES = ("32x16x16/w4/s2", "16x32x32/w2/s1")
OTHER_TILES_CASES = [(129, 300, 64, torch.bfloat16, 20.0, True), (7, 20, 384, torch.float32, 100.0, False)]
GRAD_RTOL = {torch.float32: 2e-5, torch.bfloat16: 2**-6, torch.float16: 2**-8}


def _case_id(case):
    B, N, D, dtype, scale, symmetric = case
    return f"B{B}-N{N}-D{D}-{str(dtype).removeprefix('torch.')}-scale{scale:g}-{'sym' if symmetric else 'oneway'}"


def _random_pair(B, N, D, dtype, device):
    """Fresh q (B, D) and p (N, D) with norms from 0.5 to 3.5 (so the norm's gradient
    matters) and positives p[i] somewhat closer to q[i] than the negatives (mean
    cosine about 0.3): a loss of order 1, as early in training, not 0."""
    q = torch.randn(B, D, device=device) * (0.5 + 3 * torch.rand(B, 1, device=device))
    p = torch.randn(N, D, device=device) * (0.5 + 3 * torch.rand(N, 1, device=device))
    p[:B] += 0.25 * q
    return q.to(dtype), p.to(dtype)


def _loss_and_grads(fn, q, p, **kwargs):
    q, p = q.clone().requires_grad_(True), p.clone().requires_grad_(True)
    loss = fn(q, p, **kwargs)
    dq, dp = torch.autograd.grad(loss, (q, p))
    return loss.detach(), dq, dp


def grad_error(got, want, x, scale, B):
    """The worst |got - want| of a gradient of the input x, as a fraction of the module
    docstring's tolerance (<= 1 passes); inf if got is not finite or has the wrong dtype or shape."""
    if got.dtype != x.dtype or got.shape != x.shape or not torch.isfinite(got).all():
        return float("inf")
    got, want = got.float(), want.float()
    unit = scale / (B * x.float().norm(dim=-1, keepdim=True))  # (R, 1) natural gradient size
    allowed = GRAD_RTOL[x.dtype] * want.abs().max() + 2e-7 * scale * unit
    return ((got - want).abs() / allowed).max().item()


def reference_errors(fn, B, N, D, dtype, scale, symmetric, device="cpu", **kwargs):
    """fn(q, p) against losses.info_nce(q, p) on fresh inputs: the worst errors of the loss
    and of both gradients as fractions of their tolerances, {"loss": ., "dq": ., "dp": .}."""
    q, p = _random_pair(B, N, D, dtype, device)
    want_loss, want_dq, want_dp = _loss_and_grads(losses.info_nce, q, p, scale=scale, symmetric=symmetric)
    loss, dq, dp = _loss_and_grads(fn, q, p, scale=scale, symmetric=symmetric, **kwargs)
    fp32_scalar = loss.dtype == torch.float32 and loss.shape == ()
    loss_error = abs(loss - want_loss).item() / (1e-6 * (scale + abs(want_loss).item()))
    return {
        "loss": loss_error if fp32_scalar else float("inf"),
        "dq": grad_error(dq, want_dq, q, scale, B),
        "dp": grad_error(dp, want_dp, p, scale, B),
    }


def check_against_reference(fn, B, N, D, dtype, scale, symmetric, device="cpu", **kwargs):
    """Assert fn(q, p) equals losses.info_nce(q, p) in value and in both gradients."""
    errors = reference_errors(fn, B, N, D, dtype, scale, symmetric, device, **kwargs)
    text = ", ".join(f"{name} {error:.2f}" for name, error in errors.items())
    assert all(error <= 1 for error in errors.values()), f"errors as fractions of their tolerances: {text}"


# ---------------------------------------------------------------------------
# info_nce_chunked, on CPU


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_chunked_matches_info_nce(case):
    B, N, D, dtype, scale, symmetric = case
    # About two thirds of B: it divides neither B nor N here, and for symmetric a
    # chunk straddles the end of the positives (columns B-1 and B).
    chunk_size = 2 * B // 3 + 1 if B > 1 else 4
    assert B % chunk_size or B == 1
    check_against_reference(losses.info_nce_chunked, B, N, D, dtype, scale, symmetric, chunk_size=chunk_size)


@pytest.mark.parametrize("chunk_size", [1, 3, 64, 10_000])
def test_chunked_any_chunk_size(chunk_size):
    """One passage per chunk up to one chunk for all: the chunking must not matter."""
    check_against_reference(losses.info_nce_chunked, 9, 25, 16, torch.float32, 20.0, True, chunk_size=chunk_size)


def test_chunked_saves_only_inputs_and_statistics():
    """The memory claim: nothing (B, N)-sized is kept for the backward."""
    B, N, D = 40, 50, 8
    q, p = _random_pair(B, N, D, torch.float32, "cpu")
    q.requires_grad_(True)
    loss = losses.info_nce_chunked(q, p, symmetric=True, chunk_size=16)
    saved = loss.grad_fn.saved_tensors
    assert any(t.shape == q.shape for t in saved) and any(t.shape == p.shape for t in saved)
    assert all(t.shape in (q.shape, p.shape) or t.numel() <= B + N for t in saved), [t.shape for t in saved]


# ---------------------------------------------------------------------------
# info_nce_triton: CUDA when present, Triton's interpreter on CPU otherwise


# One skip, not one per case, on machines without a GPU.
NO_CUDA = pytest.param(
    None, id="no-cuda", marks=pytest.mark.skip(reason="no CUDA device; test_triton_interpreter covers the kernels")
)


@pytest.mark.parametrize("case", CASES if torch.cuda.is_available() else [NO_CUDA], ids=_case_id)
def test_triton_matches_info_nce_on_cuda(case):
    pytest.importorskip("triton")
    B, N, D, dtype, scale, symmetric = case
    check_against_reference(losses.info_nce_triton, B, N, D, dtype, scale, symmetric, device="cuda")


def run_interpreter_cases():
    """Entry point of test_triton_interpreter's subprocess: every INTERPRETER_CASE, then
    the OTHER_TILES_CASES under OTHER_TILES, one line each, stopping at the first
    mismatch with its case in the message."""
    import fused

    assert fused.INTERPRETED, "run with TRITON_INTERPRET=1 set before Python starts"
    default_tiles = f"{fused.FORWARD}, {fused.BACKWARD}"
    runs = [(case, None) for case in INTERPRETER_CASES] + [(case, OTHER_TILES) for case in OTHER_TILES_CASES]
    for index, ((B, N, D, dtype, scale, symmetric), tiles) in enumerate(runs):
        torch.manual_seed(index)
        case = f"{_case_id((B, N, D, dtype, scale, symmetric))} tiles {', '.join(tiles) if tiles else default_tiles}"
        if tiles:
            fused.configure(*(fused.Tiles.parse(text) for text in tiles))
        try:
            check_against_reference(losses.info_nce_triton, B, N, D, dtype, scale, symmetric)
        except AssertionError as error:
            raise AssertionError(f"{case}: {error}") from error
        print(f"ok {case}", flush=True)


def test_triton_interpreter():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    command = "import test_kernels; test_kernels.run_interpreter_cases()"
    result = subprocess.run([sys.executable, "-c", command], env=env, cwd=ROOT, capture_output=True, text=True)
    report = result.stdout + result.stderr
    print(report)
    assert result.returncode == 0, f"Triton kernels under TRITON_INTERPRET=1 failed:\n{report[-4000:]}"
    assert result.stdout.count("ok ") == len(INTERPRETER_CASES) + len(OTHER_TILES_CASES), report
    assert f"tiles {', '.join(OTHER_TILES)}" in result.stdout, report


def test_tiles_are_written_and_read_back():
    fused = pytest.importorskip("fused")
    tiles = fused.Tiles.parse("128x64x32/w4/s3")
    assert (tiles.block_m, tiles.block_n, tiles.block_d, tiles.warps, tiles.stages) == (128, 64, 32, 4, 3)
    assert fused.Tiles.parse(str(fused.FORWARD)) == fused.FORWARD
    with pytest.raises(ValueError, match="block_m must be a power of two of at least 16, got 96"):
        fused.Tiles(96, 64, 64, warps=4, stages=3)
    with pytest.raises(ValueError, match="block_d must be a power of two of at least 16, got 8"):
        fused.Tiles(64, 64, 8, warps=4, stages=3)
    with pytest.raises(ValueError, match="warps must be 1, 2, 4, 8 or 16"):
        fused.Tiles(64, 64, 64, warps=3, stages=3)
    with pytest.raises(ValueError, match="like 128x64x64/w8/s3; got '128x64'"):
        fused.Tiles.parse("128x64")


# ---------------------------------------------------------------------------
# Choosing the implementation (--loss-impl)


def test_pick_info_nce(monkeypatch):
    assert set(losses.INFO_NCE_IMPLS) == {"torch", "chunked", "triton"}
    assert losses.pick_info_nce("torch", "cpu", 32) is losses.info_nce
    assert losses.pick_info_nce("chunked", torch.device("cpu"), 32) is losses.info_nce_chunked
    with pytest.raises(ValueError, match="unknown InfoNCE implementation"):
        losses.pick_info_nce("flash", "cpu", 32)
    # auto without a measurement: plain info_nce up to SMALL_SCORES = 8192^2 scores, chunked beyond
    monkeypatch.setattr(losses, "MEASURED_FASTEST", {})
    assert losses.SMALL_SCORES == 8192 * 8192
    assert losses.pick_info_nce("auto", "cpu", 8192, 384) is losses.info_nce
    assert losses.pick_info_nce("auto", "cpu", 8193, 384) is losses.info_nce_chunked
    assert losses.pick_info_nce("auto", "cpu", 4096, 384, passages=32768) is losses.info_nce_chunked
    # Without Triton: auto never takes the kernel, even on a GPU, and asking for it says why.
    monkeypatch.setattr(losses, "TRITON_INSTALLED", False)
    assert losses.pick_info_nce("auto", "cuda", 2048, 1024) is losses.info_nce
    assert losses.pick_info_nce("auto", "cuda", 65536, 1024) is losses.info_nce_chunked
    with pytest.raises(ValueError, match="pip install triton"):
        losses.pick_info_nce("triton", "cuda", 2048)
    with pytest.raises(ValueError, match="pip install triton"):
        losses.info_nce_triton(torch.randn(2, 4), torch.randn(2, 4))


def test_auto_follows_the_measured_table(monkeypatch):
    """A made-up measurement on a GPU "X": plain PyTorch fastest at B = 2048, the kernel
    at 16384 only for D = 768, the kernel at 65536."""
    table = {
        ("X", 2048, 768): "torch", ("X", 2048, 1024): "torch",
        ("X", 16384, 768): "triton", ("X", 16384, 1024): "torch",
        ("X", 65536, 768): "triton", ("X", 65536, 1024): "triton",
    }  # fmt: skip
    monkeypatch.setattr(losses, "MEASURED_FASTEST", table)
    assert losses.auto_info_nce("X", 16384, 16384, 700) == "triton"  # nearest measured D: 768
    assert losses.auto_info_nce("X", 30000, 30000, 1000) == "torch"  # 16384's entry at D = 1024
    assert losses.auto_info_nce("X", 4096, 4096, 768) == "torch"  # 2048's entry
    assert losses.auto_info_nce("X", 100_000, 100_000, 1024) == "triton"  # the kernel's memory is linear in B
    # not measured: below the smallest B, on another GPU, without the kernels (gpu None): SMALL_SCORES
    assert losses.auto_info_nce("X", 1024, 1024, 768) == "torch"
    assert losses.auto_info_nce("Y", 16384, 16384, 768) == "chunked"
    assert losses.auto_info_nce(None, 65536, 65536, 1024) == "chunked"
    # D unknown: the measured dimensions at 16384 disagree, so SMALL_SCORES decides
    assert losses.auto_info_nce("X", 16384, 16384, None) == "chunked"
    assert losses.auto_info_nce("X", 65536, 65536, None) == "triton"
    # plain PyTorch is not taken beyond the largest measured score matrix, 65536 x 65536
    table[("X", 65536, 1024)] = "torch"
    assert losses.auto_info_nce("X", 65536, 65536, 1024) == "torch"
    assert losses.auto_info_nce("X", 70000, 70000, 1024) == "chunked"


def test_pick_triton_on_cpu_without_interpreter(monkeypatch):
    fused = pytest.importorskip("fused")
    if fused.INTERPRETED:
        pytest.skip("this process runs Triton's interpreter, under which CPU tensors are allowed")
    with pytest.raises(ValueError, match="need a CUDA device"):
        losses.pick_info_nce("triton", "cpu", 2048)
    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_name()
        monkeypatch.setattr(losses, "MEASURED_FASTEST", {(gpu, 2048, 768): "triton"})
        assert losses.pick_info_nce("auto", "cuda", 4096, 768) is losses.info_nce_triton
        assert losses.pick_info_nce("auto", "cuda", 1024, 768) is losses.info_nce
