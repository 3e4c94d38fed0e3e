"""
Run directories, shared by distill.py and joint_train.py: arguments with presets
and resume, output-directory protection, atomic checkpoints, RNG state, log lines.

A run directory holds the student (loadable by SentenceTransformer and AutoModel),
projection.pt (W), args.json, log.jsonl and trainer_state.pt. It is always written
whole under a temporary name and swapped in, so a crash never leaves half of one.
"""

import argparse
import json
import os
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from data import BadInput


def parse_args(parser, presets, argv=None):
    """Parse with a preset's values (or, with --resume, the run's saved arguments) as
    defaults; flags given on the command line override either."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    given = explicit_flags(parser, argv)
    defaults = dict(presets[args.preset])
    if args.resume:
        # subtle: a crash between save()'s two renames leaves the run as out_dir.tmp or
        # .old until check_out_dir() recovers it (on rank 0, later); read it from there
        saved = after_recovery(Path(args.out_dir)) / "args.json"
        if not saved.is_file():
            raise BadInput(
                f"--resume: '{args.out_dir}' holds no run to resume (no args.json); run without --resume to start one"
            )
        defaults = json.loads(saved.read_text())
    parser.set_defaults(**defaults)
    args = parser.parse_args(argv)
    args.resume = "resume" in given
    args.overwrite = "overwrite" in given
    return args


def explicit_flags(parser, argv):
    """Names of the options given on the command line, as opposed to defaulted."""
    shadow = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        if action.nargs == 0:  # store_true and friends
            shadow.add_argument(*action.option_strings, dest=action.dest, action="store_true")
        else:
            shadow.add_argument(*action.option_strings, dest=action.dest, nargs=action.nargs)
    return set(vars(shadow.parse_known_args(argv)[0]))


def ours(path):
    """Whether path is missing, empty, or a run directory of ours (it holds args.json):
    the only directories this module ever deletes or replaces."""
    return not path.exists() or (path.is_dir() and (not any(path.iterdir()) or (path / "args.json").is_file()))


def check_out_dir(out_dir, resume, overwrite):
    """Refuse to touch an existing run unless asked, and anything that is not a run
    at all; finish an interrupted swap first."""
    recover(out_dir)
    if not ours(out_dir):
        raise BadInput(
            f"--out-dir '{out_dir}' holds files that are not a run of this repository (no args.json); "
            "it is never overwritten: choose another --out-dir"
        )
    if out_dir.exists() and any(out_dir.iterdir()) and not (resume or overwrite):
        raise BadInput(
            f"--out-dir '{out_dir}' already holds a run; pass --resume to continue it or --overwrite to replace it"
        )
    if resume and not (out_dir / "trainer_state.pt").exists():
        raise BadInput(
            f"--resume: '{out_dir}' has no checkpoint yet (no trainer_state.pt); start again with --overwrite"
        )


def start(out_dir, args):
    """A fresh run directory holding only args.json (called once all input is checked)."""
    if args.overwrite and ours(out_dir):
        shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "args.json").write_text(json.dumps(vars(args), indent=2))


def save(out_dir, student, W, args, state):
    """Write the whole run directory as out_dir.tmp, then swap it in with two renames.

    Directory renames are atomic, so a crash (or a full disk, which fails while
    .tmp is written) leaves the previous checkpoint in place; recover() finishes a
    swap interrupted between its two renames.
    """
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    old = out_dir.with_name(out_dir.name + ".old")
    for leftover in (tmp, old):
        if not ours(leftover):
            raise SystemExit(
                f"error: '{leftover}' is in the way of the checkpoint and is not a run of this repository; "
                f"move it, then continue with --resume (the checkpoint in {out_dir} is intact)"
            )
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        (tmp / "args.json").write_text(json.dumps(vars(args), indent=2))  # first: it marks the folder as ours
        student.save(tmp)
        if W is not None:
            torch.save(
                {"weight": W.weight.detach().cpu(), "student_dim": W.in_features, "teacher_dim": W.out_features},
                tmp / "projection.pt",
            )
        if (out_dir / "log.jsonl").exists():
            shutil.copy2(out_dir / "log.jsonl", tmp / "log.jsonl")
        torch.save(state, tmp / "trainer_state.pt")  # last: its presence marks a complete checkpoint
    except (
        OSError,
        RuntimeError,
    ) as error:  # a full disk: OSError from Python's writes, RuntimeError from torch.save's
        shutil.rmtree(tmp, ignore_errors=True)
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise SystemExit(
            f"error: could not write a checkpoint to {tmp} ({reason}); the previous checkpoint in {out_dir} is intact"
        ) from None
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def after_recovery(out_dir):
    """Where the run is: out_dir, or after a crash between save()'s two renames the
    complete new checkpoint (out_dir.tmp) or else the previous one (out_dir.old)."""
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    old = out_dir.with_name(out_dir.name + ".old")
    if not out_dir.exists() and (tmp / "trainer_state.pt").exists() and (tmp / "args.json").exists():
        return tmp
    if not out_dir.exists() and (old / "args.json").exists():
        return old
    return out_dir


def recover(out_dir):
    """Finish a swap that a crash interrupted between its two renames; folders named
    like ours that are not runs (no args.json) are left alone."""
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    old = out_dir.with_name(out_dir.name + ".old")
    found = after_recovery(out_dir)
    if found != out_dir:
        os.replace(found, out_dir)
    for leftover in (tmp, old):
        if leftover.exists() and ours(leftover):
            shutil.rmtree(leftover, ignore_errors=True)


def load_state(out_dir, main_rank=True):
    """The saved trainer state; log lines after its step are dropped (by rank 0),
    since the resumed run is about to redo those steps."""
    state = torch.load(out_dir / "trainer_state.pt", weights_only=False)
    log = out_dir / "log.jsonl"
    if main_rank and log.exists():
        lines = [line for line in log.read_text().splitlines() if json.loads(line).get("step", 0) <= state["step"]]
        log.write_text("".join(line + "\n" for line in lines))
    return state


def set_learning_rate(optimizer, scheduler, lr):
    """After loading a checkpoint: peak learning rate lr (e.g. a lower one given with
    --resume --lr after a non-finite loss), at the schedule's current point.

    subtle: the optimizer's and scheduler's saved states both carry the old peak
    (initial_lr, base_lrs), and would silently keep it."""
    scheduler.base_lrs = [lr for _ in optimizer.param_groups]
    factor = scheduler.lr_lambdas[0](scheduler.last_epoch)
    for group in optimizer.param_groups:
        group["initial_lr"] = lr
        group["lr"] = lr * factor


def stop_not_finite(what, step, out_dir, script, lr):
    """End a run whose loss, gradients or weights stopped being finite: say at which
    step, and how to go on with a quarter of the learning rate."""
    if (out_dir / "trainer_state.pt").exists():
        advice = f"the last checkpoint in {out_dir} is intact: continue with `python {script} --resume --out-dir {out_dir} --lr {lr / 4:g}`"
    else:
        advice = f"no checkpoint was written yet: start again with your flags and `--overwrite --lr {lr / 4:g}`"
    raise SystemExit(f"error: {what} at step {step}; {advice}")


def all_finite(params):
    """Whether every parameter is finite (one device sync; called before each save)."""
    return bool(torch.stack([torch.isfinite(param).all() for param in params]).all())


def rng_state():
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(states, rank=0, world=1):
    """Restore this rank's generators from the list of every rank's states."""
    if len(states) != world:
        raise BadInput(
            f"the checkpoint was written by {len(states)} process(es); resume it with the same number, not {world}"
        )
    state = states[rank]
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


def linear_schedule(warmup_steps, max_steps):
    """LR multiplier: linear warm-up from 0 to 1 over warmup_steps, then linear decay to 0."""

    def factor(step):
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (max_steps - step) / max(max_steps - warmup_steps, 1))

    return factor


def log_line(out_dir, record):
    """One greppable line on the console (`step 120 | loss 0.4121 | ...`) and one JSON line in log.jsonl."""
    text = " | ".join(
        f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}" for key, value in record.items()
    )
    tqdm.write(text)
    with open(out_dir / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
