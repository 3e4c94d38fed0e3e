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
        saved = Path(args.out_dir) / "args.json"
        if not saved.is_file():
            raise BadInput(f"--resume: '{args.out_dir}' holds no run to resume (no args.json); run without --resume to start one")
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


def check_out_dir(out_dir, resume, overwrite):
    """Refuse to touch an existing run unless asked; finish an interrupted swap first."""
    recover(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not (resume or overwrite):
        raise BadInput(f"--out-dir '{out_dir}' already holds a run; pass --resume to continue it or --overwrite to replace it")
    if resume and not (out_dir / "trainer_state.pt").exists():
        raise BadInput(f"--resume: '{out_dir}' has no checkpoint yet (no trainer_state.pt); start again with --overwrite")


def start(out_dir, args):
    """A fresh run directory holding only args.json (called once all input is checked)."""
    if args.overwrite:
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
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        student.save(tmp)
        if W is not None:
            torch.save({"weight": W.weight.detach().cpu(), "student_dim": W.in_features, "teacher_dim": W.out_features}, tmp / "projection.pt")
        (tmp / "args.json").write_text(json.dumps(vars(args), indent=2))
        if (out_dir / "log.jsonl").exists():
            shutil.copy2(out_dir / "log.jsonl", tmp / "log.jsonl")
        torch.save(state, tmp / "trainer_state.pt")  # last: its presence marks a complete checkpoint
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise SystemExit(f"error: could not write a checkpoint to {tmp} ({error}); the previous checkpoint in {out_dir} is intact") from None
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def recover(out_dir):
    """Finish a swap that a crash interrupted between its two renames."""
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    old = out_dir.with_name(out_dir.name + ".old")
    if not out_dir.exists() and (tmp / "trainer_state.pt").exists():
        os.replace(tmp, out_dir)
    elif not out_dir.exists() and old.exists():
        os.replace(old, out_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)


def load_state(out_dir, main_rank=True):
    """The saved trainer state; log lines after its step are dropped (by rank 0),
    since the resumed run is about to redo those steps."""
    state = torch.load(out_dir / "trainer_state.pt", weights_only=False)
    log = out_dir / "log.jsonl"
    if main_rank and log.exists():
        lines = [line for line in log.read_text().splitlines() if json.loads(line).get("step", 0) <= state["step"]]
        log.write_text("".join(line + "\n" for line in lines))
    return state


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
        raise BadInput(f"the checkpoint was written by {len(states)} process(es); resume it with the same number, not {world}")
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
    text = " | ".join(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}" for key, value in record.items())
    tqdm.write(text)
    with open(out_dir / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
