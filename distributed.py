"""
Running distill.py and joint_train.py under torchrun, PyTorch's own launcher:

    torchrun --nproc_per_node 8 joint_train.py ...

Each rank reads its own slice of every global batch, gradients are averaged across
ranks after the backward pass, and only rank 0 logs, evaluates and saves. Without
torchrun (no WORLD_SIZE in the environment) every function here is a no-op, so
the single-process scripts pay nothing for it.

Gradients are averaged by hand (one flat all-reduce) rather than through
DistributedDataParallel: gradient caching runs several backward passes per step,
and one explicit reduction after the last of them is both simpler to read and the
same arithmetic.
"""

import os
import sys

import torch
import torch.distributed as dist

from cli import BadInput


def setup(device="auto"):
    """(rank, world size, device) from torchrun's environment; joins the process group.

    device: auto (CUDA, else Apple's mps, else CPU), cpu, cuda or mps, as --device.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available[device]:
        raise BadInput(f"--device {device}: no {device} device is available here; use --device auto or cpu")
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return 0, 1, torch.device(device)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if device == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        cuda = torch.device("cuda", local_rank)
        torch.cuda.set_device(cuda)
        dist.init_process_group("nccl", device_id=cuda)
        return rank, world, cuda
    if device == "mps":
        raise BadInput("torchrun with --device mps: one Apple GPU runs one process; run without torchrun")
    dist.init_process_group("gloo")
    return rank, world, torch.device("cpu")


def active():
    return dist.is_available() and dist.is_initialized()


def barrier():
    if active():
        dist.barrier()


def shutdown():
    """Under torchrun: leave the group together, then end the process. Call it last.

    The barrier stops a rank tearing gloo down while another is still busy (rank 0
    saving). subtle: even after destroy_process_group, gloo's threads can abort the
    interpreter's own shutdown ('terminate called without an active exception',
    SIGABRT; about 1 run in 20 on a loaded 2-core machine with torch 2.13 and gloo),
    and torchrun then reports a finished run as failed. Everything is written by
    now, so the process flushes its output and exits without that finalisation.
    """
    if not active():
        return
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def broadcast_parameters(params):
    """Start every rank from rank 0's weights (e.g. a randomly initialised W)."""
    if active():
        for param in params:
            dist.broadcast(param.data, src=0)


def average_gradients(params):
    """Mean of each parameter's gradient over ranks, in one flat all-reduce.

    Each rank's loss is the mean over its own B/world examples, so the mean of the
    ranks' gradients is the gradient of the mean over the global batch.
    """
    if not active():
        return
    grads = [param.grad for param in params if param.grad is not None]
    flat = torch.cat([grad.reshape(-1) for grad in grads])  # (P,)
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
        offset += grad.numel()


class _GatherWithGradient(torch.autograd.Function):
    """All-gather whose backward sends every rank the gradient its rows received
    from all ranks' losses (an all-reduce of the full gradient, then its own slice;
    an all-reduce rather than a reduce-scatter because gloo has no reduce-scatter)."""

    @staticmethod
    def forward(ctx, x):
        gathered = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, x.contiguous())
        return torch.cat(gathered)  # (world * B, D)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        rows = grad.shape[0] // dist.get_world_size()
        rank = dist.get_rank()
        return grad[rank * rows : (rank + 1) * rows]


def gather_own_first(p):
    """Rows of all ranks (passages as extra in-batch negatives), this rank's own first.

    p: (B, D) this rank's passages, row i the positive of this rank's query i.
    Returns (world * B, D) with rows 0..B-1 = p, so losses.info_nce(q, all_p)
    needs no index offset; gradients flow back to every row's owner. Each rank's
    loss is then the mean over its own queries, and averaging the ranks'
    gradients gives the gradient of one process on the concatenated batch.
    The same serves queries for the symmetric loss's passage-to-query term.
    """
    if not active():
        return p
    everything = _GatherWithGradient.apply(p)
    rank, rows = dist.get_rank(), p.shape[0]
    others = torch.cat([everything[: rank * rows], everything[(rank + 1) * rows :]])
    # subtle: the local rows come from `everything` too (not `p` directly), so the
    # gradient other ranks send to them arrives through the gather's backward
    return torch.cat([everything[rank * rows : (rank + 1) * rows], others])


def mean_over_ranks(x):
    """The mean of a scalar tensor over ranks (for logging the global batch's loss)."""
    if active():
        x = x.clone()
        dist.all_reduce(x)
        x /= dist.get_world_size()
    return x


def gather_objects(obj):
    """A list with every rank's obj (e.g. RNG states), on every rank."""
    if not active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
