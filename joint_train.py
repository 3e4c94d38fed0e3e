"""
MIMO stage 2: cross-lingual InfoNCE anchored by distillation, and the paper's baselines.

Starting from stage 1 (student s and projection W), on aligned query/passage rows:

    L = lam * L_XLCO + (1 - lam) * L_Distill                               (--lam 0.2)
    L_XLCO    = InfoNCE(s(q_X), s(p_Y)), in-batch negatives, X != Y, scale 20 (tau 0.05)
    L_Distill = (d(W s(q_X), t(q_en)) + d(W s(p_Y), t(p_en))) / 2,  d = 1 - cos

XLCO alone pulls each query toward its passage in another language but lets languages drift apart as clusters;
the distillation term keeps every language anchored to the teacher's single English space.

    python joint_train.py                           # MIMO on the demo, from runs/stage1
    python joint_train.py --objective xlco          # baselines: xlco | infonce | lakda
    python joint_train.py --preset paper            # the paper's run (GPU, network)

Before training, MIMO checks its premise, that the teacher's space is the better one: teacher and student each
retrieve the dev rows' English passages for their English queries, and the line `teacher check ... nDCG@10` gives
both scores; where the student is already clearly better (distillation would pull it down), it says what to try.
A lambda sweep is a shell loop, one run folder per value, and `python evaluate.py` draws its alignment/uniformity
trajectory (runs/eval/au.png):

    for lam in 0 0.1 0.2 1; do python joint_train.py --lam $lam --out-dir runs/stage2-lam$lam; done

--per-device-batch-size B with --mini-batch-size M < B uses gradient caching (Gao et al. 2021): the loss sees all
B in-batch negatives while only M texts hold a graph at a time.
"""

import math
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

import checkpoint
import data
from checkpoint import BadInput, Parser, Range, Run, entry_point
from losses import DISTILL_LOSSES, OBJECTIVES, fp32, info_nce_triton, pick_info_nce, query_passage_distill
from teacher import TeacherCache, teacher_embed

QWEN3_QUERY_PROMPT = "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"
PRESETS = {
    "demo": {},
    # The paper's stage 2 (MIMO, EMNLP 2026, Sec. 4): mMARCO in 14 languages (`python data.py prepare-mmarco`)
    "paper": {
        "data": "mmarco-14.parquet",
        "languages": "en ar de es fr hi id it ja nl pt ru vi zh".split(),
        "teacher_query_prompt": QWEN3_QUERY_PROMPT,
        "per_device_batch_size": 2048,  # on each of 2 GPUs, as the authors ran it: 2048 in-batch negatives
        "mini_batch_size": 64,
        "lr": 2e-5,
        "weight_decay": 0.0,  # the Hugging Face Trainer's default, which the authors kept
        "max_length": 512,
        "epochs": 1,
        "dev_size": 1000,
        "log_every": 10,
        "save_every": 200,
        "teacher_batch_size": 128,
    },
}
CHECK_MIN_MARGIN = 0.02  # the teacher check's least margin of nDCG@10 (see teacher_check)


def build_parser():
    # fmt: off
    parser = Parser(__doc__)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="demo",
                        help="defaults to start from; flags given explicitly override them")
    parser.add_argument("--out-dir", "--output-dir", default=None,
                        help="run directory; default runs/stage2 for mimo, runs/stage2-<objective> for the baselines")
    group = parser.add_argument_group("objective")
    group.add_argument("--objective", choices=list(OBJECTIVES), default="mimo",
                       help="mimo: lam*XLCO + (1-lam)*Distill; xlco: cross-lingual InfoNCE alone; infonce: "
                            "same-language InfoNCE; lakda: (1-a)*InfoNCE + a*KL(p_b||p_a); each is a function and "
                            "an entry of losses.OBJECTIVES")
    group.add_argument("--lam", type=Range(float, 0, 1), default=0.2,
                       help="lambda: weight of the cross-lingual InfoNCE term; 1 - lambda weighs distillation "
                            "(paper: 0.2)")
    group.add_argument("--scale", type=Range(float, 0, 1000, open_low=True), default=20.0,
                       help="InfoNCE logit scale 1/tau (paper: 20, i.e. tau 0.05)")
    group.add_argument("--symmetric", action="store_true",
                       help="add the passage-to-query InfoNCE direction (paper: query-to-passage only)")
    group.add_argument("--lakda-alpha", type=Range(float, 0, 1), default=0.5,
                       help="a: weight of LaKDA's KL term (Yang et al. 2024: 0.5)")
    group.add_argument("--distill-loss", default="cosine", choices=list(DISTILL_LOSSES),
                       help="distance d of L_Distill (paper: cosine)")
    group.add_argument("--gather-negatives", action="store_true",
                       help="under torchrun, every query also sees all other ranks' passages as negatives "
                            "(paper: off, negatives per device)")
    group.add_argument("--loss-impl", default="auto", choices=["auto", "torch", "chunked", "triton"],
                       help="InfoNCE implementation; auto: the one measured fastest for this GPU, batch and width "
                            "(losses.MEASURED_FASTEST), else plain PyTorch for small score matrices, chunked for large")
    group = parser.add_argument_group("models")
    group.add_argument("--stage1", default="runs/stage1",
                       help="stage-1 run directory (student and projection.safetensors) that mimo starts from")
    group.add_argument("--init", default="auto", choices=["auto", "stage1", "backbone"],
                       help="auto: mimo starts from --stage1, the baselines from the raw --student backbone")
    group.add_argument("--student", default="sentence-transformers/all-MiniLM-L6-v2",
                       help="raw backbone for --init backbone (the demo's, as in stage 1)")
    group.add_argument("--student-pooling", default=None, choices=sorted(checkpoint.POOLING_MODES),
                       help="student pooling; default: from its config, else mean")
    group.add_argument("--teacher", default=None,
                       help="frozen English teacher; default: the one --stage1 was trained with")
    group.add_argument("--teacher-pooling", default=None, choices=sorted(checkpoint.POOLING_MODES),
                       help="teacher pooling; default: from its config")
    group.add_argument("--teacher-query-prompt", default="",
                       help="prompt the teacher sees before English queries (Qwen3-Embedding: its web-search "
                            "instruction); passages get none")
    group.add_argument("--no-teacher-check", action="store_true",
                       help="skip the check before training that compares teacher and student on English query -> "
                            "passage retrieval over the dev rows (nDCG@10); MIMO only: the baselines have no teacher, "
                            "and distill.py reads even aligned rows as parallel sentences, holding none out as rows")
    group = parser.add_argument_group("data")
    group.add_argument("--data", default="data/demo/train.jsonl",
                       help="aligned rows: .jsonl/.parquet or hub id with columns id, query_<lang>, passage_<lang>")
    group.add_argument("--languages", nargs="+", default=None,
                       help="languages to draw pairs from (default: all in the data; every row must hold each)")
    group.add_argument("--dev-size", type=Range(int, 2), default=20, help="rows held out as the dev set")
    group.add_argument("--per-device-batch-size", "--per-device-train-batch-size", type=Range(int, 1), default=32,
                       help="queries per step on each process, each with its passage: every query's in-batch "
                            "negatives (paper: 2048 on each of 2 GPUs); one step takes this times the processes")
    group.add_argument("--mini-batch-size", type=Range(int, 1), default=16,
                       help="texts per forward with a graph under gradient caching (at least the per-device batch: "
                            "no caching)")
    # fmt: on
    checkpoint.add_training_arguments(parser, PRESETS, lr=2e-5, epochs=4, max_length=64, log_every=2, save_every=10)
    return parser


def get_args(argv=None):
    """One run's arguments: a preset's (or the resumed run's), then the flags given; checked across flags."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    # subtle: --resume reads args.json from --out-dir, whose default depends on --objective: settle it first
    first, _ = parser.parse_known_args(argv)
    if first.out_dir is None:
        argv += ["--out-dir", "runs/stage2" if first.objective == "mimo" else f"runs/stage2-{first.objective}"]
    args = checkpoint.parse_args(parser, PRESETS, "joint_train.py", argv)
    if args.mini_batch_size > args.per_device_batch_size:
        raise BadInput(f"--mini-batch-size {args.mini_batch_size} is larger than --per-device-batch-size "
                       f"{args.per_device_batch_size}; it must be at most the batch")  # fmt: skip
    if args.objective == "lakda" and args.symmetric:
        raise BadInput("--symmetric is for the InfoNCE objectives; LaKDA (query-to-passage InfoNCE plus its KL) "
                       "has no passage-to-query term")  # fmt: skip
    if args.languages:  # written one way, as data.py writes the columns' languages
        args.languages = [data.language_tag(lang) or lang for lang in args.languages]
    if args.languages and len(set(args.languages)) != len(args.languages):
        raise BadInput(f"--languages names a language twice ({' '.join(args.languages)}); give each once")
    teacher = OBJECTIVES[args.objective].teacher
    args.init = args.init if args.init != "auto" else ("stage1" if teacher else "backbone")
    if teacher and args.init != "stage1":
        raise BadInput(f"--objective {args.objective} continues from stage 1 and needs --init stage1 (or auto)")
    return args


# ---------------------------------------------------------------------------
# Models, batches, gradient caching, evaluation


def load_models(args, device, amp_dtype, precision):
    """(student, teacher, W, caches) on device: the student from stage 1 or a raw backbone; with a teacher objective,
    stage 1's frozen teacher, its projection W and the query and passage teacher caches (else None)."""
    stage1 = Path(args.stage1)
    if args.init == "stage1" and not ((stage1 / "projection.safetensors").is_file()
                                      and (stage1 / "config.json").is_file()):  # fmt: skip
        raise BadInput(f"--stage1 '{stage1}' is not a finished stage-1 run (it needs the student and "
                       "projection.safetensors): run `python distill.py` first, or use --objective xlco, which needs "
                       "no stage 1")  # fmt: skip
    start = str(stage1) if args.init == "stage1" else args.student
    student = checkpoint.load_model(start, args.student_pooling, args.max_length).to(device).train()
    if not OBJECTIVES[args.objective].teacher:
        return student, None, None, None
    if not (stage1 / "args.json").is_file():
        raise BadInput(f"--stage1 '{stage1}' lacks args.json, which names the teacher W was trained against; "
                       "point --stage1 at a run directory written by distill.py")  # fmt: skip
    stage1_args = checkpoint.run_arguments(stage1)  # {} if damaged: refused below
    if stage1_args.get("script", "distill.py") != "distill.py" or not stage1_args.get("teacher"):
        raise BadInput(f"--stage1 '{stage1}' holds a run of {stage1_args.get('script', 'another script')}, not a "
                       "stage-1 run of distill.py with its teacher; point --stage1 at one")  # fmt: skip
    # the teacher, and how it pools, as in stage 1: W maps into that space
    name = args.teacher or stage1_args["teacher"]
    pooling = args.teacher_pooling or stage1_args.get("teacher_pooling")
    teacher = checkpoint.load_model(name, pooling, args.max_length, amp_dtype if device.type == "cuda" else None)
    teacher = checkpoint.freeze(teacher).to(device)
    student_dim, teacher_dim = student.get_embedding_dimension(), teacher.get_embedding_dimension()
    projection = checkpoint.load_projection(stage1)  # (Dt, Ds)
    if projection.shape != (teacher_dim, student_dim):
        raise BadInput(
            f"{stage1}/projection.safetensors maps {projection.shape[1]} to {projection.shape[0]} dimensions, "
            f"but the student has {student_dim} and the teacher '{name}' {teacher_dim}"
        )
    W = torch.nn.Linear(student_dim, teacher_dim, bias=False).to(device)  # weight (Dt, Ds), trained on
    W.weight.data.copy_(projection)
    # a cache per prompt; with an empty query prompt the query cache is stage 1's, and its English texts are reused
    caches = {view: TeacherCache(args.cache_dir, name, prompt, teacher.max_seq_length, teacher_dim, teacher.pooling,
                                 precision=precision)
              for view, prompt in (("q_en", args.teacher_query_prompt), ("p_en", ""))}  # fmt: skip
    return student, teacher, W, caches


def base_model(args):
    """The backbone the student began as: stage 1's student, or --student."""
    arguments = checkpoint.run_arguments(args.stage1) if args.init == "stage1" else {}
    return arguments.get("student", args.stage1) if arguments else args.student


TEACHER_VIEWS = {"q_en": ("query", "en"), "p_en": ("passage", "en")}  # the English versions the teacher embeds


def make_batch(rows, pairs, objective, passage_langs=None):
    """{view: texts} for one step: the objective's views (losses.Objective: "q" the queries in X, "p" their passages
    in Y, ...) and, with a teacher, the English "q_en"/"p_en"; passage_langs: LaKDA's third language Z per row."""
    entry = OBJECTIVES[objective]
    views = {**entry.views, **(TEACHER_VIEWS if entry.teacher else {})}
    z = passage_langs or [None] * len(rows)
    return {
        view: [row[field][{"x": x, "y": y, "z": zz}.get(lang, lang)] for row, (x, y), zz in zip(rows, pairs, z)]
        for view, (field, lang) in views.items()
    }


def embed(model, texts):
    """texts -> (B, D) pooled, unnormalised fp32 embeddings with the graph: the training forward."""
    features = {key: value.to(model.device) if torch.is_tensor(value) else value
                for key, value in model.preprocess(texts).items()}  # fmt: skip
    return fp32(model(features)["sentence_embedding"])


def embed_without_graph(student, texts, mini_batch_size, autocast):
    """Gradient caching, pass 1: (N, D) fp32 embeddings without a graph, in mini-batches, and the RNG state before
    each so pass 2 can replay the same dropout masks."""
    device = student.device
    chunks, states = [], []
    with torch.no_grad():
        for start in range(0, len(texts), mini_batch_size):
            cuda_state = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
            states.append((torch.get_rng_state(), cuda_state))
            with autocast():
                chunks.append(embed(student, texts[start : start + mini_batch_size]))  # (M, D)
    return torch.cat(chunks), states


def backward_through_cache(student, texts, grad, states, mini_batch_size, autocast):
    """Gradient caching, pass 2: re-encode each mini-batch with a graph under pass 1's RNG state, and back-propagate
    the cached dL/d(embedding) rows; by the chain rule the parameter gradients are the full batch's."""
    device = student.device
    # the RNG is restored on leaving: the stream continues as if pass 2 had not replayed it
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for index, start in enumerate(range(0, len(texts), mini_batch_size)):
            # subtle: with new dropout masks the cached dL/de would belong to another network than the one here
            torch.set_rng_state(states[index][0])
            if states[index][1] is not None:
                torch.cuda.set_rng_state(states[index][1], device)
            with autocast():
                e = embed(student, texts[start : start + mini_batch_size])  # (M, D)
            e.backward(grad[start : start + mini_batch_size])


def contrastive(info_nce, q, p, scale, symmetric, gather, dtype=None):
    """The InfoNCE term for this rank's q and p, (B, Ds) each; negatives: this rank's other passages (the paper's), or
    with gather (--gather-negatives) every rank's, so the mean over ranks is one process's loss on the global batch:

        L = InfoNCE(q, P_all)                                  (query -> passage)
        L = (InfoNCE(q, P_all) + InfoNCE(p, Q_all)) / 2        (--symmetric)

    P_all, Q_all: every rank's rows, this rank's first (row i stays the positive). dtype: the fused kernel's inputs'."""
    if dtype is not None:  # the cast is differentiable: its gradient comes back in fp32
        q, p = q.to(dtype), p.to(dtype)
    if not gather:
        return info_nce(q, p, scale, symmetric)
    forward = info_nce(q, checkpoint.gather_own_first(p), scale)
    if not symmetric:
        return forward
    # passage-to-query is the same loss with the roles swapped: passage j against all queries
    return (forward + info_nce(p, checkpoint.gather_own_first(q), scale)) / 2


@torch.no_grad()
def evaluate_dev(student, W, dev_rows, dev_pairs, teacher_targets, batch_size, autocast):
    """In-batch accuracy over the dev set (query in X -> its passage in Y among all dev passages) and, with a
    teacher, the distillation distance through W averaged over queries and passages."""
    queries = [row["query"][x] for row, (x, _) in zip(dev_rows, dev_pairs)]  # query i in X, its passage i in Y
    passages = [row["passage"][y] for row, (_, y) in zip(dev_rows, dev_pairs)]
    q, p = (checkpoint.encode(student, texts, batch_size, autocast) for texts in (queries, passages))  # (N, Ds) each
    result = {"accuracy": ((q @ p.T).argmax(1) == torch.arange(len(q))).float().mean().item()}
    if W is not None:
        device = W.weight.device
        t_q, t_p = (t.to(device) for t in teacher_targets)
        result["distance"] = query_passage_distill(W(q.to(device)), t_q, W(p.to(device)), t_p).item()
    return result


def gold_ndcg_at_k(q, p, k=10):
    """Per-query nDCG@k, passage i the one relevant to query i: q, p (N, D) unit rows -> (N,) float64. The ideal DCG
    is 1, so nDCG@k = 1 / log2(r + 1) for rank r <= k, else 0. r counts the passages scoring at least as high as the
    gold (itself included): a tie goes against it, so an embedder giving every text one vector scores its worst."""
    scores = q.float() @ p.float().T  # (N, N)
    rank = (scores >= scores.diagonal()[:, None]).sum(1).double()  # (N,), 1 = the gold passage is first
    return torch.where(rank <= k, 1 / torch.log2(rank + 1), torch.zeros_like(rank))


def teacher_check(teacher_q, teacher_p, student_q, student_p):
    """MIMO's premise, that distilling helps while the teacher's space is the better one: nDCG@10 of English query ->
    passage retrieval over the N dev rows, (N, Dt) and (N, Ds) unit rows. The student is clearly better when the mean
    per-query difference d exceeds max(CHECK_MIN_MARGIN, 2 SE(d))."""
    teacher, student = gold_ndcg_at_k(teacher_q, teacher_p), gold_ndcg_at_k(student_q, student_p)  # (N,) each
    difference = student - teacher
    n, mean_difference = len(difference), difference.mean().item()
    margin = max(CHECK_MIN_MARGIN, 2 * difference.std().item() / math.sqrt(n) if n > 1 else math.inf)
    return {"queries": n, "teacher_ndcg_at_10": teacher.mean().item(), "student_ndcg_at_10": student.mean().item(),
            "difference": mean_difference, "margin": margin, "student_better": mean_difference > margin}  # fmt: skip


def print_summary(args, step, history, dev_size):
    before, after = history.get("before"), history["after"]
    print(f"\nstage 2 ({args.objective}) done: {step} steps")
    if before:
        kind = "same-language" if OBJECTIVES[args.objective].same_language else "cross-lingual"
        print(f"  dev in-batch accuracy ({kind}, {dev_size} candidates)  "
              f"{before['accuracy']:.3f} -> {after['accuracy']:.3f}")  # fmt: skip
        if "distance" in after:
            print(f"  dev distillation distance to the teacher           "
                  f"{before['distance']:.4f} -> {after['distance']:.4f}  (lower is better)")  # fmt: skip


# ---------------------------------------------------------------------------


def main(argv=None):
    args = get_args(argv)
    # --- process, seed, device, precision: one Run per rank; rank 0 alone prints, evaluates and saves
    run = Run(args, "joint_train.py")
    device, amp_dtype, per_rank = run.device, run.amp_dtype, run.per_rank

    # --- data: aligned rows, a dev split, every row in every language
    rows = data.load_rows(args.data)
    languages = args.languages or data.common_languages(rows)
    data.require_languages(rows, languages, args.data)
    objective = OBJECTIVES[args.objective]  # its loss function, views and labels: see losses.py
    if objective.teacher and "en" not in languages:
        raise BadInput(f"--objective {args.objective} needs English in every row (the teacher's side); "
                       f"'{args.data}' has {languages}")  # fmt: skip
    order = data.epoch_order(len(rows), args.seed, epoch=-1)  # a fixed split, independent of training order
    dev_rows, train_rows = data.subset(rows, order[: args.dev_size]), data.subset(rows, order[args.dev_size :])
    if len(train_rows) < run.global_batch:
        raise BadInput(f"a step takes {run.global_batch} rows (--per-device-batch-size {per_rank} on {run.world} "
                       f"process(es)), more than the {len(train_rows)} training rows of '{args.data}'")  # fmt: skip
    same_language = objective.same_language  # the monolingual baseline: X = Y
    dev_pairs = data.language_pairs(len(dev_rows), languages, args.seed, epoch=-1, same_language=same_language)
    if run.main:
        print(f"data: {len(train_rows)} training and {len(dev_rows)} dev rows in {len(languages)} languages "
              f"({' '.join(languages)})")  # fmt: skip

    # --- models: the student (and W, teacher) from stage 1, or a raw backbone
    student, teacher, W, caches = load_models(args, device, amp_dtype, run.precision)
    student_dim = student.get_embedding_dimension()
    passages = run.global_batch if args.gather_negatives else per_rank  # each query's candidates
    try:
        info_nce = pick_info_nce(args.loss_impl, device, per_rank, dim=student_dim, passages=passages)
    except ValueError as error:
        raise BadInput(str(error)) from None
    # The fused kernel sends bf16/fp16 operands to tensor cores and fp32 ones down its exact path, so under autocast
    # the contrastive term gets embeddings rounded to the autocast dtype (as a bf16 matmul would); the rest keeps fp32.
    contrastive_dtype = amp_dtype if info_nce is info_nce_triton else None
    # what an objective sees besides the embeddings (losses.py): arguments, this run's InfoNCE, gather, and d
    h = SimpleNamespace(**vars(args),
                        info_nce=lambda q, p: contrastive(info_nce, q, p, args.scale, args.symmetric,
                                                          args.gather_negatives, contrastive_dtype),
                        gather=checkpoint.gather_own_first if args.gather_negatives else lambda x: x,
                        distance=DISTILL_LOSSES[args.distill_loss].loss)  # fmt: skip

    def targets(view, texts):  # the cache carries its prompt: the query instruction, or none for passages
        return teacher_embed(teacher, caches[view], texts, args.teacher_batch_size, amp_dtype)

    caching = args.mini_batch_size < per_rank
    if run.main:
        start = args.stage1 if args.init == "stage1" else args.student
        cache_note = f"gradient caching in mini-batches of {args.mini_batch_size}" if caching else "no gradient caching"
        gathered = ", negatives gathered over all ranks" if args.gather_negatives and run.world > 1 else ""
        print(f"objective {args.objective}, student from {start} ({student_dim}-d), "
              f"{'teacher ' + teacher.name if teacher else 'no teacher'}, InfoNCE {info_nce.__name__}, "
              f"{device} {run.precision}, {cache_note}, {run.world} process(es){gathered}")  # fmt: skip

    # --- optimizer and schedule: AdamW over the student and W (the distillation term goes through it), warm-up, decay
    params = [*student.parameters(), *([W.weight] if W is not None else [])]
    steps_per_epoch = len(train_rows) // run.global_batch
    optimizer, scheduler, max_steps = checkpoint.adamw_with_schedule(params, args, steps_per_epoch)

    # --- start or resume
    dev_targets = None  # teacher embeddings of the dev rows' English queries and passages, (N, Dt) each, on rank 0
    if teacher is not None and run.main:
        dev_targets = (targets("q_en", [row["query"]["en"] for row in dev_rows]),
                       targets("p_en", [row["passage"]["en"] for row in dev_rows]))  # fmt: skip
    # a resumed run has the teacher check in its history already
    check = None
    if dev_targets is not None and not args.no_teacher_check and not args.resume:
        english = [checkpoint.encode(student, [row[field]["en"] for row in dev_rows], 64, run.autocast)
                   for field in ("query", "passage")]  # fmt: skip
        check = teacher_check(*dev_targets, *english)  # the teacher's side: the dev targets, its query prompt included
        print(f"teacher check (English query -> English passage among the {check['queries']} dev passages, nDCG@10): "
              f"teacher {check['teacher_ndcg_at_10']:.3f}, student {check['student_ndcg_at_10']:.3f}")  # fmt: skip
        if check["student_better"]:  # then distillation pulls the student down: say what to try
            print(f"The student already retrieves English better than the teacher (by {check['difference']:.3f}, "
                  f"beyond the margin {check['margin']:.3f}), so the distillation term pulls it toward a weaker space: "
                  "try a stronger teacher (stage 1 again with distill.py --teacher) or a larger --lam.")  # fmt: skip
    kind = "same-language" if same_language else "cross-lingual"
    card = {"base_model": base_model(args), "teacher": teacher.name if teacher else None, "languages": languages,
            "objective": objective.card(vars(args)), "dev_metrics": {
                "distance": "distillation distance to the teacher (lower is better)",
                "accuracy": f"{kind} in-batch accuracy, query in X -> passage in Y"}}  # fmt: skip
    step, history = run.start(student, W, optimizer, scheduler, max_steps, f"joint_train {args.objective}", card)
    if step == 0 and run.main:
        history["before"] = evaluate_dev(student, W, dev_rows, dev_pairs, dev_targets, 64, run.autocast)
        run.log({"step": 0, **{f"dev_{key}": value for key, value in history["before"].items()}})
        if check is not None:
            history["teacher_check"] = check
            run.log({"step": 0, **{f"dev_en_{key}": value for key, value in check.items() if key != "queries"}})

    # --- the loop
    order_epoch = None
    while step < max_steps:
        epoch, position = divmod(step, steps_per_epoch)
        if epoch != order_epoch:  # order and language pairs are functions of (seed, epoch) alone
            order_epoch, order = epoch, data.epoch_order(len(train_rows), args.seed, epoch)
            pairs = data.language_pairs(len(order), languages, args.seed, epoch, same_language=same_language)
            passage_langs = data.passage_languages(len(order), languages, args.seed, epoch)  # LaKDA's
        first = position * run.global_batch + run.rank * per_rank  # this rank's slice of the global batch
        index = range(first, first + per_rank)
        views = make_batch([train_rows[order[k]] for k in index], [pairs[k] for k in index], args.objective,
                           [passage_langs[k] for k in index])  # fmt: skip
        # teacher targets come from the cache after their first epoch: an 8B teacher is paid once per unique text
        t = {view: targets(view, views[view]).to(device) for view in TEACHER_VIEWS if view in views}  # (B, Dt)

        # embeddings: with gradient caching, leaves without a graph (pass 1) ...
        if caching:
            cached = {view: embed_without_graph(student, views[view], args.mini_batch_size, run.autocast)
                      for view in objective.views}  # fmt: skip
            e = {view: embedding.requires_grad_(True) for view, (embedding, _) in cached.items()}
        else:  # ... or plain, with the graph through the whole batch
            with run.autocast():
                e = {view: embed(student, views[view]) for view in objective.views}  # (B, Ds) each, this rank's
        # the objective (losses.OBJECTIVES): for MIMO, lam * L_XLCO + (1 - lam) * L_Distill
        loss, terms = objective.loss(e, t, W, h)

        # the scaler is a no-op unless the precision is fp16; unscale before clipping so the norm is the true one
        run.scaler.scale(loss).backward()  # into the parameters, or, when caching, into the embeddings
        if caching:  # pass 2, mini-batch by mini-batch; the cached gradients carry fp16's loss scale
            for view, (_, states) in cached.items():
                backward_through_cache(student, views[view], e[view].grad, states, args.mini_batch_size, run.autocast)
        checkpoint.average_gradients(params)  # the mean over ranks: the global batch's gradient
        run.scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, args.grad_clip or float("inf"))
        run.scaler.step(optimizer)
        run.scaler.update()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        step += 1
        # logs on log steps (the only .item(), which waits for the GPU); stops on a non-finite loss or gradient norm
        if run.after_step(step, loss, terms, grad_norm):
            run.save(step, history)

    # --- evaluate on the dev rows, save the finished run
    if run.main:
        history["after"] = evaluate_dev(student, W, dev_rows, dev_pairs, dev_targets, 64, run.autocast)
        run.log({"step": step, **{f"dev_{key}": value for key, value in history["after"].items()}})
        print_summary(args, step, history, len(dev_rows))
    run.finish(step, history)
    return history  # (under torchrun, finish() has ended the process)


if __name__ == "__main__":
    entry_point(main)
