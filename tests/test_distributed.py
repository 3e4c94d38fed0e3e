"""Two processes under torchrun (gloo, CPU) against one process on the whole batch."""

import sys

import pytest
import torch
from conftest import ROOT, read_log, torchrun, write_rows

import checkpoint
import joint_train
from losses import info_nce

sys.path.insert(0, str(ROOT / "tests"))
import ddp_worker  # noqa: E402


@pytest.mark.parametrize("direction", ["one-way", "symmetric"])
def test_gathered_loss_and_gradients_equal_one_process(tiny_models, tmp_path, direction):
    """Each rank: its 4 queries against all 8 passages (its own first), and for the
    symmetric loss its 4 passages against all 8 queries; loss and gradients averaged
    over ranks. One process: 8 queries against 8 passages. Same loss, same gradients
    (float64, so to ~1e-10)."""
    torchrun(str(ROOT / "tests" / "ddp_worker.py"), tiny_models["student"], str(tmp_path / "ranks.pt"), direction)
    ranks = torch.load(tmp_path / "ranks.pt")

    student, W, t_q, t_p = ddp_worker.setup(tiny_models["student"])
    q, p = joint_train.embed(student, ddp_worker.QUERIES), joint_train.embed(student, ddp_worker.PASSAGES)
    loss = ddp_worker.mimo_loss(info_nce(q, p, 20.0, symmetric=direction == "symmetric"), q, p, W, t_q, t_p)
    loss.backward()
    torch.testing.assert_close(ranks["loss"], loss.detach(), rtol=1e-10, atol=1e-12)
    single = dict(student.named_parameters(), W=W.weight)
    assert ranks["grads"].keys() == single.keys()
    for name, param in single.items():
        if param.grad is None:
            assert ranks["grads"][name] is None
            continue
        torch.testing.assert_close(ranks["grads"][name], param.grad, rtol=1e-7, atol=1e-10, msg=name)


def test_joint_train_runs_under_torchrun_with_gathered_negatives(tiny_models, tmp_path):
    """Stage 1 then stage 2 with --gather-negatives on 2 CPU processes: rank 0 alone
    writes the run directory, and each rank keeps its own teacher-cache files."""
    rows = write_rows(tmp_path / "rows.jsonl", n=24)
    common = [
        "--data",
        rows,
        "--cache-dir",
        str(tmp_path / "cache"),
        "--dev-size",
        "4",
        "--max-length",
        "32",
        "--log-every",
        "1",
    ]
    torchrun(
        "distill.py",
        "--teacher",
        tiny_models["teacher"],
        "--student",
        tiny_models["student"],
        "--out-dir",
        str(tmp_path / "s1"),
        "--per-device-batch-size",
        "8",
        "--max-steps",
        "2",
        *common,
    )
    result = torchrun(
        "joint_train.py",
        "--stage1",
        str(tmp_path / "s1"),
        "--out-dir",
        str(tmp_path / "s2"),
        "--gather-negatives",
        "--per-device-batch-size",
        "4",
        "--mini-batch-size",
        "2",
        "--max-steps",
        "2",
        "--save-every",
        "1",
        *common,
    )
    assert "2 process(es), negatives gathered over all ranks" in result.stdout
    assert "2 steps of 8 rows (2 process(es) x --per-device-batch-size 4)" in result.stdout  # the batch is per device
    log = read_log(tmp_path / "s2")
    assert [record["step"] for record in log if "loss" in record] == [1, 2]  # logged once, by rank 0
    state = torch.load(tmp_path / "s2" / checkpoint.STATE, weights_only=False)
    assert len(state["rng"]) == 2  # both ranks' generators, for an exact resume
    writer_processes = {
        p.stem.split("-")[-2] for p in (tmp_path / "cache").glob("*/keys-*.txt")
    }  # keys-<host>-<pid>-<id>
    assert len(writer_processes) >= 2  # the ranks wrote files of their own: no two processes append to one file
