"""Run by tests/test_distributed.py under `torchrun --nproc_per_node 2` (gloo, CPU).

Each rank takes its half of a fixed batch, computes the MIMO loss with passages
(and, for the symmetric loss, queries) gathered from both ranks and gradient caching, averages gradients across ranks,
and rank 0 saves the mean loss and the gradients for the test to compare with one
process on the whole batch.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import checkpoint  # noqa: E402
import joint_train  # noqa: E402
from losses import cosine_distill_loss, info_nce  # noqa: E402

QUERIES = [
    "what is water",
    "why is the sky blue",
    "stone age tools",
    "a river in spain",
    "green paper",
    "light and glass",
    "metal bread",
    "cloud river",
]
PASSAGES = [
    "water is a liquid",
    "light scatters",
    "early people used stone",
    "the ebro flows east",
    "paper can be green",
    "glass lets light through",
    "nobody bakes metal",
    "clouds feed rivers",
]


def setup(model_path):
    """The same student, W and teacher targets on every rank (and in the test)."""
    torch.manual_seed(0)
    student = checkpoint.load_model(model_path).double().eval()
    W = torch.nn.Linear(student.get_embedding_dimension(), 16, bias=False).double()
    t_q, t_p = torch.randn(8, 16, dtype=torch.float64), torch.randn(8, 16, dtype=torch.float64)
    return student, W, t_q, t_p


def mimo_loss(xlco, q, p, W, t_q, t_p):
    return 0.2 * xlco + 0.8 * (cosine_distill_loss(W(q), t_q) + cosine_distill_loss(W(p), t_p)) / 2


def main():
    model_path, out_file, symmetric = sys.argv[1], sys.argv[2], sys.argv[3] == "symmetric"
    rank, world, _ = checkpoint.setup()
    student, W, t_q, t_p = setup(model_path)
    mine = slice(rank * 4, rank * 4 + 4)
    no_autocast = lambda: torch.autocast("cpu", enabled=False)  # noqa: E731
    q, q_states = joint_train.embed_without_graph(student, QUERIES[mine], 2, no_autocast)
    p, p_states = joint_train.embed_without_graph(student, PASSAGES[mine], 2, no_autocast)
    q, p = q.requires_grad_(True), p.requires_grad_(True)
    xlco = joint_train.contrastive(info_nce, q, p, 20.0, symmetric, gather=True)  # the script's own term
    loss = mimo_loss(xlco, q, p, W, t_q[mine], t_p[mine])
    loss.backward()
    joint_train.backward_through_cache(student, QUERIES[mine], q.grad, q_states, 2, no_autocast)
    joint_train.backward_through_cache(student, PASSAGES[mine], p.grad, p_states, 2, no_autocast)
    params = dict(student.named_parameters(), W=W.weight)
    checkpoint.average_gradients(list(params.values()))
    mean_loss = checkpoint.mean_over_ranks(loss.detach())
    if rank == 0:
        torch.save({"loss": mean_loss, "grads": {name: param.grad for name, param in params.items()}}, out_file)
    checkpoint.shutdown()


if __name__ == "__main__":
    main()
