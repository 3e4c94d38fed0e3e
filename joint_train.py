"""
MIMO stage 2: cross-lingual InfoNCE anchored by distillation, and the paper's baselines.

Starting from stage 1 (student s and projection W), on aligned query/passage rows:

    L = lam * L_XLCO + (1 - lam) * L_Distill                               (--lam 0.2)
    L_XLCO    = InfoNCE(s(q_X), s(p_Y)), in-batch negatives, X != Y, scale 20 (tau 0.05)
    L_Distill = (d(W s(q_X), t(q_en)) + d(W s(p_Y), t(p_en))) / 2,  d = 1 - cos

XLCO alone pulls each query toward its passage in another language but lets
languages drift apart as clusters; the distillation term keeps every language
anchored to the teacher's single English space.

    python joint_train.py                           # MIMO on the demo, from runs/stage1
    python joint_train.py --objective xlco          # baselines: xlco | infonce | lakda
    python joint_train.py --preset paper            # the paper's run (GPU, network)

--batch-size B with --mini-batch-size M < B uses gradient caching (Gao et al. 2021):
the loss sees all B in-batch negatives while only M texts hold a graph at a time.
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
from losses import DISTILL_LOSSES, cosine_distill_loss, info_nce_triton, lakda_loss, pick_info_nce
from model import Encoder, TeacherCache, freeze, teacher_embed

QWEN3_QUERY_PROMPT = "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"
PRESETS = {
    "demo": {},
    # The paper's stage 2 (MIMO, EMNLP 2026, Sec. 4): translated MS MARCO in 14
    # languages (prepare it with `python data.py prepare-mmarco`), all ordered pairs.
    "paper": {
        "data": "mmarco-14.parquet",
        "languages": "en ar de es fr hi id it ja nl pt ru vi zh".split(),
        "teacher_query_prompt": QWEN3_QUERY_PROMPT,
        "batch_size": 2048,
        "mini_batch_size": 64,
        "lr": 2e-5,
        "max_length": 512,
        "epochs": 1,
        "dev_size": 1000,
        "log_every": 10,
        "save_every": 200,
        "teacher_batch_size": 128,
    },
}
OBJECTIVES = ("mimo", "xlco", "infonce", "lakda")


def get_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="demo",
        help="defaults to start from; flags given explicitly override them",
    )
    # objective
    parser.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default="mimo",
        help="mimo: lam*XLCO + (1-lam)*Distill; xlco: cross-lingual InfoNCE alone; infonce: same-language InfoNCE; lakda: (1-a)*InfoNCE + a*KL(p_b||p_a)",
    )
    parser.add_argument(
        "--lam",
        type=float,
        default=0.2,
        help="lambda: weight of the cross-lingual InfoNCE term; 1 - lambda weighs distillation (paper: 0.2)",
    )
    parser.add_argument(
        "--scale", type=float, default=20.0, help="InfoNCE logit scale 1/tau (paper: 20, i.e. tau 0.05)"
    )
    parser.add_argument(
        "--symmetric",
        action="store_true",
        help="add the passage-to-query InfoNCE direction (paper: query-to-passage only)",
    )
    parser.add_argument(
        "--lakda-alpha", type=float, default=0.5, help="a: weight of LaKDA's KL term (Yang et al. 2024: 0.5)"
    )
    parser.add_argument(
        "--distill-loss",
        default="cosine",
        choices=sorted(DISTILL_LOSSES),
        help="distance d of L_Distill (paper: cosine)",
    )
    parser.add_argument(
        "--gather-negatives",
        action="store_true",
        help="under torchrun, every query also sees all other ranks' passages as negatives (paper: off, negatives per device)",
    )
    parser.add_argument(
        "--loss-impl",
        default="auto",
        choices=["auto", "torch", "chunked", "triton"],
        help="InfoNCE implementation; auto: the fused Triton kernel on CUDA, the chunked PyTorch one elsewhere",
    )
    # models
    parser.add_argument(
        "--stage1",
        default="runs/stage1",
        help="stage-1 run directory (student and projection.pt) that mimo starts from",
    )
    parser.add_argument(
        "--init",
        default="auto",
        choices=["auto", "stage1", "backbone"],
        help="auto: mimo starts from --stage1, the baselines from the raw --student backbone",
    )
    parser.add_argument(
        "--student",
        default="sentence-transformers/all-MiniLM-L6-v2",
        help="raw backbone for --init backbone (the demo's, as in stage 1)",
    )
    parser.add_argument(
        "--student-pooling",
        default=None,
        choices=["mean", "cls", "last"],
        help="student pooling; default: from its config, else mean",
    )
    parser.add_argument(
        "--teacher", default=None, help="frozen English teacher; default: the one --stage1 was trained with"
    )
    parser.add_argument(
        "--teacher-pooling",
        default=None,
        choices=["mean", "cls", "last"],
        help="teacher pooling; default: from its config",
    )
    parser.add_argument(
        "--teacher-query-prompt",
        default="",
        help="prompt the teacher sees before English queries (Qwen3-Embedding: its web-search instruction); passages get none",
    )
    # data
    parser.add_argument(
        "--data",
        default="data/demo/train.jsonl",
        help="aligned rows: .jsonl/.parquet or hub id with columns id, query_<lang>, passage_<lang>",
    )
    parser.add_argument(
        "--languages",
        nargs="+",
        default=None,
        help="languages to draw pairs from (default: all in the data; every row must hold each)",
    )
    parser.add_argument("--dev-size", type=int, default=20, help="rows held out as the dev set")
    # optimisation
    parser.add_argument(
        "--batch-size",
        type=int,
        default=32,
        help="queries per step, each with its passage; the in-batch negatives (paper: 2048)",
    )
    parser.add_argument(
        "--mini-batch-size",
        type=int,
        default=16,
        help="texts per forward with a graph under gradient caching (>= --batch-size: no caching)",
    )
    parser.add_argument("--lr", type=float, default=2e-5, help="peak AdamW learning rate (paper: 2e-5)")
    parser.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    parser.add_argument(
        "--warmup", type=float, default=0.1, help="fraction of steps of linear warm-up, then linear decay (paper: 10%%)"
    )
    parser.add_argument("--epochs", type=int, default=4, help="passes over the training rows (paper: 1)")
    parser.add_argument(
        "--max-steps", type=int, default=None, help="stop after this many steps (overrides --epochs for the schedule)"
    )
    parser.add_argument(
        "--max-length",
        type=int,
        default=64,
        help="max tokens per text, student and teacher (paper: 512); equal to stage 1's to reuse its teacher cache",
    )
    parser.add_argument("--grad-clip", type=float, default=1.0, help="clip the gradient norm to this (0: off)")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="autocast dtype; auto: bf16 on GPU (the paper's), fp32 on CPU",
    )
    # bookkeeping
    parser.add_argument(
        "--out-dir",
        default=None,
        help="run directory; default runs/stage2 for mimo, runs/stage2-<objective> for the baselines",
    )
    parser.add_argument(
        "--cache-dir", default="runs/teacher_cache", help="teacher embedding cache, shared with stage 1"
    )
    parser.add_argument(
        "--teacher-batch-size", type=int, default=128, help="texts per teacher forward when filling the cache"
    )
    parser.add_argument("--log-every", type=int, default=2, help="steps between log lines")
    parser.add_argument("--save-every", type=int, default=10, help="steps between checkpoints (always one at the end)")
    parser.add_argument("--seed", type=int, default=0, help="seed for data order, language pairs and initialisation")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out-dir from its last checkpoint, with its saved arguments",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a run in --out-dir")
    argv = sys.argv[1:] if argv is None else list(argv)
    # subtle: --out-dir's default depends on --objective, and --resume reads args.json
    # from --out-dir, so settle it before the preset/resume parse
    first, _ = parser.parse_known_args(argv)
    if first.out_dir is None:
        argv += ["--out-dir", "runs/stage2" if first.objective == "mimo" else f"runs/stage2-{first.objective}"]
    return checkpoint.parse_args(parser, PRESETS, argv)


# ---------------------------------------------------------------------------
# Batches, gradient caching, evaluation


def make_batch(rows, pairs, objective):
    """Texts for one step. Returns {view: list of texts}: 'q' the queries in X, 'p'
    their passages in Y, 'q_en'/'p_en' the English versions for the teacher, and
    for LaKDA 'q_b' the same queries in Y (a second language version)."""
    views = {
        "q": [row["query"][x] for row, (x, y) in zip(rows, pairs)],
        "p": [row["passage"][y] for row, (x, y) in zip(rows, pairs)],
    }
    if objective == "mimo":
        views["q_en"] = [row["query"]["en"] for row in rows]
        views["p_en"] = [row["passage"]["en"] for row in rows]
    if objective == "lakda":
        views["q_b"] = [row["query"][y] for row, (x, y) in zip(rows, pairs)]
    return views


def at_least_fp32(x):
    """bf16/fp16 autocast outputs -> fp32 for the loss; fp64 (the gradient-cache test) stays."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def cuda_rng_state(device):
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def embed_without_graph(student, texts, mini_batch_size, autocast):
    """Gradient caching, pass 1: (N, D) fp32 embeddings with no graph, in mini-batches,
    and the RNG state before each so pass 2 can replay the same dropout masks."""
    device = next(student.parameters()).device
    chunks, states = [], []
    with torch.no_grad():
        for start in range(0, len(texts), mini_batch_size):
            states.append((torch.get_rng_state(), cuda_rng_state(device)))
            with autocast():
                chunks.append(at_least_fp32(student.embed(texts[start : start + mini_batch_size])))
    return torch.cat(chunks), states


def backward_through_cache(student, texts, grad, states, mini_batch_size, autocast):
    """Gradient caching, pass 2: re-encode each mini-batch with a graph, under the RNG
    state pass 1 saw, and back-propagate the cached dL/d(embedding) rows into the
    parameters. By the chain rule the parameter gradients are those of the full batch."""
    device = next(student.parameters()).device
    after = (torch.get_rng_state(), cuda_rng_state(device))
    for index, start in enumerate(range(0, len(texts), mini_batch_size)):
        torch.set_rng_state(states[index][0])
        if states[index][1] is not None:
            torch.cuda.set_rng_state(states[index][1], device)
        with autocast():
            e = at_least_fp32(student.embed(texts[start : start + mini_batch_size]))  # (M, D)
        e.backward(grad[start : start + mini_batch_size])
    torch.set_rng_state(after[0])  # continue the stream as if pass 2 had not replayed it
    if after[1] is not None:
        torch.cuda.set_rng_state(after[1], device)


def contrastive(info_nce, q, p, scale, symmetric, gather, dtype=None):
    """The (cross-lingual) InfoNCE term for this rank's queries q and passages p, (B, Ds) each.

    gather=False: negatives are this rank's other passages (the paper's setting).
    gather=True (--gather-negatives under torchrun): each query also sees every other
    rank's passages, and for the symmetric loss each passage every rank's queries, so
    the mean over ranks equals the loss of one process on the whole global batch:

        L = InfoNCE(q, P_all)                                  (query -> passage)
        L = (InfoNCE(q, P_all) + InfoNCE(p, Q_all)) / 2        (--symmetric)

    with P_all, Q_all every rank's rows, this rank's first (row i stays the positive).
    dtype: the fused kernel's operand dtype (bf16 under autocast), or None for as-is.
    """
    if dtype is not None:  # the cast is differentiable: its gradient comes back in fp32
        q, p = q.to(dtype), p.to(dtype)
    if not gather:
        return info_nce(q, p, scale, symmetric)
    forward = info_nce(q, distributed.gather_own_first(p), scale)
    if not symmetric:
        return forward
    # passage-to-query is the same loss with the roles swapped: passage j against all queries
    return (forward + info_nce(p, distributed.gather_own_first(q), scale)) / 2


@torch.no_grad()
def evaluate_dev(student, W, dev_rows, dev_pairs, teacher_targets, batch_size, autocast_dtype):
    """In-batch accuracy over the whole dev set (each query in X finds its passage in
    Y among all dev passages, each in its own Y) and, with a teacher, the dev
    distillation distance through W averaged over queries and passages."""
    q = student.encode(
        [row["query"][x] for row, (x, _) in zip(dev_rows, dev_pairs)], batch_size, autocast_dtype=autocast_dtype
    )
    p = student.encode(
        [row["passage"][y] for row, (_, y) in zip(dev_rows, dev_pairs)], batch_size, autocast_dtype=autocast_dtype
    )
    result = {"accuracy": ((q @ p.T).argmax(1) == torch.arange(len(q))).float().mean().item()}
    if W is not None:
        device = W.weight.device
        t_q, t_p = teacher_targets
        result["distance"] = (
            cosine_distill_loss(W(q.to(device)), t_q.to(device)) + cosine_distill_loss(W(p.to(device)), t_p.to(device))
        ).item() / 2
    return result


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
    for flag in ("batch_size", "mini_batch_size", "dev_size", "max_length", "log_every", "save_every"):
        if getattr(args, flag) < 1:
            raise BadInput(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if args.mini_batch_size > args.batch_size:
        raise BadInput(
            f"--mini-batch-size {args.mini_batch_size} is larger than --batch-size {args.batch_size}; it must be at most the batch"
        )
    if args.batch_size % world:
        raise BadInput(f"--batch-size {args.batch_size} does not split evenly over {world} processes")
    per_rank = args.batch_size // world  # each rank's share of the global batch
    if args.objective == "lakda" and args.symmetric:
        raise BadInput(
            "--symmetric is for the InfoNCE objectives; LaKDA (query-to-passage InfoNCE plus its KL) has no passage-to-query term"
        )
    init = args.init if args.init != "auto" else ("stage1" if args.objective == "mimo" else "backbone")
    if args.objective == "mimo" and init != "stage1":
        raise BadInput("--objective mimo continues from stage 1 and needs --init stage1 (or auto)")

    # --- seed, device, precision
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed + rank)  # ranks draw different dropout masks; weights are identical
    if args.threads:
        torch.set_num_threads(args.threads)
    precision = args.precision if args.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    autocast = lambda: torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)  # noqa: E731
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")  # only fp16 needs loss scaling
    try:
        info_nce = pick_info_nce(args.loss_impl, device)
    except ValueError as error:
        raise BadInput(str(error)) from None
    # The fused kernel multiplies bf16/fp16 operands on tensor cores; fp32 operands send
    # it down its exact-fp32 path, without them. So under autocast the contrastive term
    # gets the embeddings rounded to the autocast dtype (as a bf16 similarity matmul
    # would round them); the distillation term, and every other path, keeps fp32.
    contrastive_dtype = amp_dtype if info_nce is info_nce_triton else None

    # --- data: aligned rows, a dev split, every row in every language
    rows = data.load_rows(args.data)
    languages = args.languages or data.common_languages(rows)
    if len(set(languages)) != len(languages):
        raise BadInput(f"--languages names a language twice ({' '.join(languages)}); give each once")
    data.require_languages(rows, languages, args.data)
    if len(languages) < 2:
        raise BadInput(
            f"'{args.data}' holds fewer than two languages common to all rows ({languages}); cross-lingual pairs need two"
        )
    if args.objective == "mimo" and "en" not in languages:
        raise BadInput(
            f"--objective mimo needs English in every row (the teacher's side); '{args.data}' has {languages}"
        )
    order = data.epoch_order(len(rows), args.seed, epoch=-1)  # a fixed split, independent of training order
    dev_rows, train_rows = data.subset(rows, order[: args.dev_size]), data.subset(rows, order[args.dev_size :])
    if len(train_rows) < args.batch_size:
        raise BadInput(
            f"--batch-size {args.batch_size} is larger than the {len(train_rows)} training rows of '{args.data}'"
        )
    dev_pairs = data.language_pairs(
        len(dev_rows), languages, args.seed, epoch=-1, same_language=args.objective == "infonce"
    )
    if main_rank:
        print(
            f"data: {len(train_rows)} training and {len(dev_rows)} dev rows in {len(languages)} languages ({' '.join(languages)})"
        )

    # --- models: the student (and W, teacher) from stage 1, or a raw backbone
    stage1 = Path(args.stage1)
    if init == "stage1":
        if not (stage1 / "projection.pt").is_file() or not (stage1 / "config.json").is_file():
            raise BadInput(
                f"--stage1 '{stage1}' is not a finished stage-1 run (it needs the student and projection.pt): "
                "run `python distill.py` first, or use --objective xlco, which needs no stage 1"
            )
        student = Encoder(str(stage1), args.student_pooling, args.max_length)
    else:
        student = Encoder(args.student, args.student_pooling, args.max_length)
    student.to(device).train()
    teacher, W, caches = None, None, None
    if args.objective == "mimo":
        if not (stage1 / "args.json").is_file():
            raise BadInput(
                f"--stage1 '{stage1}' lacks args.json, which names the teacher W was trained against; "
                "point --stage1 at a run directory written by distill.py"
            )
        stage1_args = json.loads((stage1 / "args.json").read_text())
        # the teacher, and how it pools, as in stage 1: W maps into that space
        teacher_name = args.teacher or stage1_args["teacher"]
        teacher_pooling = args.teacher_pooling or stage1_args.get("teacher_pooling")
        teacher = freeze(
            Encoder(teacher_name, teacher_pooling, args.max_length, dtype=amp_dtype if device.type == "cuda" else None)
        ).to(device)
        projection = torch.load(stage1 / "projection.pt")
        if projection["weight"].shape != (teacher.dim, student.dim):
            raise BadInput(
                f"{stage1}/projection.pt maps {projection['student_dim']} to {projection['teacher_dim']} dimensions, "
                f"but the student has {student.dim} and the teacher '{teacher_name}' {teacher.dim}"
            )
        W = torch.nn.Linear(student.dim, teacher.dim, bias=False).to(device)  # (Dt, Ds), trained on
        W.weight.data.copy_(projection["weight"])
        # queries and passages differ in prompt, so they have one cache each; with an
        # empty prompt the query cache is stage 1's and its English texts are reused
        caches = {
            "q_en": TeacherCache(
                args.cache_dir,
                teacher_name,
                args.teacher_query_prompt,
                teacher.max_length,
                teacher.dim,
                teacher.pooling,
                precision=precision,
            ),
            "p_en": TeacherCache(
                args.cache_dir, teacher_name, "", teacher.max_length, teacher.dim, teacher.pooling, precision=precision
            ),
        }
    distill_loss = DISTILL_LOSSES[args.distill_loss]

    def targets(view, texts):  # the cache carries its prompt: the query instruction, or none for passages
        return teacher_embed(teacher, caches[view], texts, args.teacher_batch_size, amp_dtype)

    if main_rank:
        print(
            f"objective {args.objective}, student from {stage1 if init == 'stage1' else args.student} ({student.dim}-d), "
            f"{'teacher ' + teacher.name if teacher else 'no teacher'}, InfoNCE {info_nce.__name__}, {device} {precision}, "
            f"{'gradient caching in mini-batches of ' + str(args.mini_batch_size) if args.mini_batch_size < per_rank else 'no gradient caching'}, "
            f"{world} process(es){', negatives gathered over all ranks' if args.gather_negatives and world > 1 else ''}"
        )

    # --- optimizer and schedule
    steps_per_epoch = len(train_rows) // args.batch_size
    max_steps = args.max_steps or steps_per_epoch * args.epochs
    params = [p for p in student.parameters()] + ([W.weight] if W is not None else [])
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, checkpoint.linear_schedule(int(args.warmup * max_steps), max_steps)
    )

    # --- start or resume
    dev_targets = None
    if teacher is not None and main_rank:
        dev_targets = (
            targets("q_en", [row["query"]["en"] for row in dev_rows]),
            targets("p_en", [row["passage"]["en"] for row in dev_rows]),
        )
    step, history = 0, {}
    if args.resume:
        state = checkpoint.load_state(out_dir, main_rank)
        student.load_state_dict(Encoder(str(out_dir)).state_dict())
        if W is not None:
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
        history["before"] = evaluate_dev(student, W, dev_rows, dev_pairs, dev_targets, 64, amp_dtype)
        log_line(out_dir, {"step": 0, **{f"dev_{key}": value for key, value in history["before"].items()}})
    distributed.broadcast_parameters(params)
    distributed.barrier()

    def save():
        """Every rank calls this (their RNG states are gathered); rank 0 writes.
        Non-finite weights (an update gone wrong between log steps) are never saved."""
        if not checkpoint.all_finite(params):
            checkpoint.stop_not_finite("the weights are not finite", step, out_dir, "joint_train.py", args.lr)
        rng = distributed.gather_objects(checkpoint.rng_state())
        if main_rank:
            state = {
                "step": step,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": rng,
                "history": history,
            }
            checkpoint.save(out_dir, student, W, args, state)
        distributed.barrier()

    # --- the loop
    caching = args.mini_batch_size < per_rank
    bar = tqdm(
        total=max_steps, initial=step, desc=f"joint_train {args.objective}", dynamic_ncols=True, disable=not main_rank
    )
    examples, last_log, order_epoch = 0, time.time(), None
    while step < max_steps:
        epoch, position = divmod(step, steps_per_epoch)
        if epoch != order_epoch:  # order and language pairs are functions of (seed, epoch) alone
            order_epoch = epoch
            order = data.epoch_order(len(train_rows), args.seed, epoch)
            pairs = data.language_pairs(
                len(order), languages, args.seed, epoch, same_language=args.objective == "infonce"
            )
        first = position * args.batch_size + rank * per_rank  # this rank's slice of the global batch
        index = range(first, first + per_rank)
        views = make_batch([train_rows[order[k]] for k in index], [pairs[k] for k in index], args.objective)
        t = {view: targets(view, views[view]).to(device) for view in ("q_en", "p_en") if view in views}  # (B, Dt) each

        # embeddings: with gradient caching, leaves without a graph (pass 1) ...
        if caching:
            cached = {
                view: embed_without_graph(student, views[view], args.mini_batch_size, autocast)
                for view in ("q", "p", "q_b")
                if view in views
            }
            e = {view: embedding.requires_grad_(True) for view, (embedding, _) in cached.items()}
        else:  # ... or plain, with the graph through the whole batch
            with autocast():
                e = {view: at_least_fp32(student.embed(views[view])) for view in ("q", "p", "q_b") if view in views}
        q, p = e["q"], e["p"]  # (B, Ds) each, B = this rank's share

        # the objective, term by term
        terms = {}
        if args.objective == "mimo":
            terms["xlco"] = contrastive(
                info_nce, q, p, args.scale, args.symmetric, args.gather_negatives, contrastive_dtype
            )
            terms["distill"] = (distill_loss(W(q), t["q_en"]) + distill_loss(W(p), t["p_en"])) / 2
            loss = args.lam * terms["xlco"] + (1 - args.lam) * terms["distill"]
        elif args.objective in ("xlco", "infonce"):  # the pairs are cross- or same-language
            loss = terms[args.objective] = contrastive(
                info_nce, q, p, args.scale, args.symmetric, args.gather_negatives, contrastive_dtype
            )
        else:  # lakda: the query in X learns to rank the batch's passages as its Y version does
            p_all = distributed.gather_own_first(p) if args.gather_negatives else p
            loss = terms["lakda"] = lakda_loss(q, e["q_b"], p_all, args.scale, args.lakda_alpha)

        scaler.scale(loss).backward()  # into the parameters, or, when caching, into the embeddings
        if caching:
            for view, (_, states) in cached.items():
                backward_through_cache(
                    student, views[view], e[view].grad, states, args.mini_batch_size, autocast
                )  # grads carry the fp16 loss scale
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
            values = {name: distributed.mean_over_ranks(term.detach()).item() for name, term in terms.items()}
            loss_value = distributed.mean_over_ranks(loss.detach()).item()
            if not np.isfinite(loss_value):
                checkpoint.stop_not_finite(f"the loss is {loss_value}", step, out_dir, "joint_train.py", args.lr)
            if not scaler.is_enabled() and not torch.isfinite(grad_norm):  # fp16's scaler skips such steps by design
                checkpoint.stop_not_finite(
                    f"the gradient norm is {grad_norm.item()}", step, out_dir, "joint_train.py", args.lr
                )
            if main_rank:
                bar.set_postfix({name: f"{value:.4f}" for name, value in values.items()})
                rate = examples / (time.time() - last_log)
                log_line(
                    out_dir,
                    {
                        "step": step,
                        "loss": loss_value,
                        **values,
                        "grad_norm": grad_norm.item(),
                        "lr": scheduler.get_last_lr()[0],
                        "ex/s": round(rate, 1),
                    },
                )
            examples, last_log = 0, time.time()
        if saving:
            save()
    bar.close()

    # --- final evaluation and save
    if main_rank:
        history["after"] = evaluate_dev(student, W, dev_rows, dev_pairs, dev_targets, 64, amp_dtype)
        log_line(out_dir, {"step": step, **{f"dev_{key}": value for key, value in history["after"].items()}})
    save()
    if main_rank:
        before, after = history.get("before"), history["after"]
        print(f"\nstage 2 ({args.objective}) done: {step} steps, saved to {out_dir}")
        if before:
            kind = "same-language" if args.objective == "infonce" else "cross-lingual"
            print(
                f"  dev in-batch accuracy ({kind}, {len(dev_rows)} candidates)  {before['accuracy']:.3f} -> {after['accuracy']:.3f}"
            )
            if "distance" in after:
                print(
                    f"  dev distillation distance to the teacher           {before['distance']:.4f} -> {after['distance']:.4f}  (lower is better)"
                )
    distributed.shutdown()  # under torchrun the process ends here
    return history


if __name__ == "__main__":
    try:
        main()
    except BadInput as error:
        sys.exit(f"error: {error}")
