"""Known answers and independent formulas for the losses in losses.py."""

import math

import pytest
import torch
import torch.nn.functional as F

from losses import cosine_distill_loss, info_nce, lakda_loss, mse_distill_loss, similarity

# ---------------------------------------------------------------------------
# Distillation


def test_cosine_distill_identical_is_zero():
    """cos(x, x) = 1, so 1 - cos = 0, whatever the norms (here scaled by 3)."""
    x = torch.randn(5, 7)
    assert cosine_distill_loss(3 * x, x).item() == pytest.approx(0.0, abs=1e-6)


def test_cosine_distill_orthogonal_is_one_and_opposite_is_two():
    """Orthogonal unit vectors have cos 0 (loss 1); opposite ones cos -1 (loss 2)."""
    a = torch.eye(4)[:2]  # e0, e1
    b = torch.eye(4)[2:]  # e2, e3
    assert cosine_distill_loss(a, b).item() == pytest.approx(1.0, abs=1e-6)
    assert cosine_distill_loss(a, -a).item() == pytest.approx(2.0, abs=1e-6)


@pytest.mark.parametrize("B,D", [(1, 3), (7, 64), (33, 1000)])
def test_cosine_distill_value_and_gradient_match_formula(B, D):
    """Against 1 - <s, t> / (|s| |t|) written out by hand, in float64."""
    s = torch.randn(B, D, dtype=torch.float64, requires_grad=True)
    t = torch.randn(B, D, dtype=torch.float64)
    loss = cosine_distill_loss(s, t)
    (grad,) = torch.autograd.grad(loss, s)

    s2 = s.detach().clone().requires_grad_(True)
    reference = (1 - (s2 * t).sum(1) / (s2.norm(dim=1) * t.norm(dim=1))).mean()
    (grad_reference,) = torch.autograd.grad(reference, s2)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
    # the gradient of 1 - cos is orthogonal to s: moving along s does not change the angle
    torch.testing.assert_close(grad.double(), grad_reference, rtol=1e-5, atol=1e-8)
    assert (grad.double() * s.detach()).sum(1).abs().max().item() < 1e-6


def test_mse_distill_matches_formula_and_gradient():
    """mean over batch and dims of (s - t)^2, gradient 2 (s - t) / (B D)."""
    s = torch.randn(6, 10, requires_grad=True)
    t = torch.randn(6, 10)
    loss = mse_distill_loss(s, t)
    loss.backward()
    assert loss.item() == pytest.approx(((s - t) ** 2).mean().item(), rel=1e-6)
    torch.testing.assert_close(s.grad, 2 * (s.detach() - t) / s.numel())


def test_distill_bf16_inputs_give_fp32_loss():
    s = torch.randn(4, 8).bfloat16()
    t = torch.randn(4, 8).bfloat16()
    assert cosine_distill_loss(s, t).dtype == torch.float32
    assert mse_distill_loss(s, t).dtype == torch.float32


# ---------------------------------------------------------------------------
# InfoNCE (L_XLCO) and LaKDA


@pytest.mark.parametrize("B", [1, 5, 64])
def test_info_nce_all_equal_scores_is_log_b(B):
    """Every query equals every passage, so all B logits tie and softmax is uniform:
    the loss is -log(1/B) = log B, in both directions."""
    q = torch.ones(B, 8)
    assert info_nce(q, q.clone(), scale=20).item() == pytest.approx(math.log(B), abs=1e-5)
    assert info_nce(q, q.clone(), scale=20, symmetric=True).item() == pytest.approx(math.log(B), abs=1e-5)


def test_info_nce_perfect_diagonal_is_about_zero():
    """Orthonormal queries matched to themselves: positives score scale*1, negatives 0,
    so the loss is log(1 + (B-1) e^-scale), about 0 at scale 100."""
    q = torch.eye(16)
    expected = math.log(1 + 15 * math.exp(-100))
    assert info_nce(q, q.clone(), scale=100).item() == pytest.approx(expected, abs=1e-6)
    assert info_nce(q, q.clone(), scale=100).item() < 1e-6


@pytest.mark.parametrize("B,N,D,symmetric", [(1, 1, 3, False), (7, 7, 64, True), (9, 20, 33, False), (9, 20, 33, True)])
def test_info_nce_matches_cross_entropy_on_materialised_logits(B, N, D, symmetric):
    """Against F.cross_entropy on explicitly normalised, scaled logits, values and both gradients."""
    q = torch.randn(B, D, dtype=torch.float64, requires_grad=True)
    p = torch.randn(N, D, dtype=torch.float64, requires_grad=True)
    loss = info_nce(q, p, scale=20, symmetric=symmetric)
    grads = torch.autograd.grad(loss, (q, p))

    q2, p2 = q.detach().clone().requires_grad_(True), p.detach().clone().requires_grad_(True)
    logits = 20 * (q2 / q2.norm(dim=1, keepdim=True)) @ (p2 / p2.norm(dim=1, keepdim=True)).T
    labels = torch.arange(B)
    reference = F.cross_entropy(logits, labels)
    if symmetric:
        reference = (reference + F.cross_entropy(logits[:, :B].T, labels)) / 2
    grads_reference = torch.autograd.grad(reference, (q2, p2))
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    for grad, grad_reference in zip(grads, grads_reference):
        torch.testing.assert_close(grad.double(), grad_reference, rtol=1e-4, atol=1e-7)


def test_lakda_matches_hand_computed_kl():
    """KL(p_b || p_a) = sum_j p_b,j (log p_b,j - log p_a,j), averaged over queries,
    with p from the unscaled cosines; plus (1 - alpha) InfoNCE."""
    q_a, q_b, p = torch.randn(6, 16), torch.randn(6, 16), torch.randn(6, 16)
    cos_a = torch.stack([torch.stack([F.cosine_similarity(x, y, dim=0) for y in p]) for x in q_a])
    cos_b = torch.stack([torch.stack([F.cosine_similarity(x, y, dim=0) for y in p]) for x in q_b])
    prob_a, prob_b = cos_a.exp() / cos_a.exp().sum(1, keepdim=True), cos_b.exp() / cos_b.exp().sum(1, keepdim=True)
    kl = (prob_b * (prob_b.log() - prob_a.log())).sum(1).mean()
    expected = 0.7 * info_nce(q_a, p, 20.0) + 0.3 * kl
    assert lakda_loss(q_a, q_b, p, scale=20.0, alpha=0.3).item() == pytest.approx(expected.item(), rel=1e-5)


def test_lakda_kl_vanishes_for_identical_query_versions():
    """Two identical language versions rank alike: KL = 0, leaving (1 - alpha) InfoNCE."""
    q, p = torch.randn(5, 8), torch.randn(5, 8)
    assert lakda_loss(q, q.clone(), p, 20.0, 0.5).item() == pytest.approx(0.5 * info_nce(q, p, 20.0).item(), rel=1e-6)


def test_similarity_is_fp32_cosine():
    q, p = torch.randn(3, 5).half(), torch.randn(4, 5).half()
    sim = similarity(q, p)
    assert sim.dtype == torch.float32 and sim.shape == (3, 4)
    assert sim.abs().max().item() <= 1 + 1e-6


def test_losses_imports_and_trains_without_triton():
    """On a machine without Triton (macOS, Windows, a CPU-only install) losses.py must
    import, the chunked InfoNCE must run, `auto` must fall back to it even on CUDA,
    and asking for the kernels must say why not. Triton is hidden from a fresh
    interpreter by a None entry in sys.modules, which makes any import of it fail."""
    import subprocess
    import sys

    from conftest import ROOT

    program = (
        "import sys\n"
        "sys.modules['triton'] = None\n"
        "import importlib.util\n"
        "importlib.util.find_spec = lambda name, *a, _real=importlib.util.find_spec: "
        "None if name.split('.')[0] == 'triton' else _real(name, *a)\n"
        "import torch, losses\n"
        "assert not losses.TRITON_INSTALLED\n"
        "q = torch.randn(5, 8, requires_grad=True)\n"
        "losses.info_nce_chunked(q, torch.randn(5, 8), 20.0, True, 2).backward()\n"
        "assert q.grad is not None\n"
        "assert losses.pick_info_nce('auto', 'cuda', 65536, 1024) is losses.info_nce_chunked\n"
        "try:\n"
        "    losses.pick_info_nce('triton', 'cuda', 2048)\n"
        "except ValueError as error:\n"
        "    print('refused:', error)\n"
        "print('triton imported:', 'triton' in sys.modules and sys.modules['triton'] is not None)\n"
    )
    result = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "refused: --loss-impl triton cannot run on cuda: Triton is not installed" in result.stdout
    assert "triton imported: False" in result.stdout
