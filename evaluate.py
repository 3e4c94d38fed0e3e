"""Is a model any good for multilingual retrieval (MLIR: one corpus mixing languages, queries in any), and why?

    python evaluate.py   # runs/stage2*, runs/stage1, the demo teacher; 50 held-out rows (350 queries, 350 passages)
    python evaluate.py --model runs/stage1 runs/stage2-lam* runs/stage2-xlco   # a --lam sweep's trajectory
    python evaluate.py --model intfloat/multilingual-e5-small --save-run \\
        --benchmark yjoonjang/mlir-benchmarks/MMLIR/Belebele_test   # adds a row to that benchmark's table
    python evaluate.py --benchmark miracl_dir --split dev --monolingual   # each query searches its own language

Output. Per benchmark a table, a row (with its max length) for every model scored on it so far in --out-dir
(runs/eval/), then each model's prompts. In --out-dir:
  <benchmark>/<model>.json: MTEB's shape (scores.<split>: "default", a subset per query language), with the encoding,
      the benchmark's counts and layout, the notes, and per_query: each query's metrics, for paired significance tests
  <benchmark>/<model>.trec: with --save-run, each query's top 100 as a TREC run (qid Q0 docid rank score tag)
  results.json, au.png: rebuilt from every result file there: every number; alignment against uniformity, each
      point labelled with its nDCG@10, MIMO runs (known by args.json) joined in lambda order: a --lam sweep's trade-off
evaluate.py replaces only files it wrote and nobody changed since (listed with their SHA-256 in
.evaluate-files.json); any other file in the way stops the run before any work.

Models are encoded as SentenceTransformer(model).encode_query / .encode_document do: every module in modules.json,
its own 'query' and 'document' prompts (--no-prompts: none, as the MIMO paper's scripts) and max length
(--max-length); a plain Hugging Face model gets mean pooling. Refused: a module sentence-transformers cannot import
here (custom code needs --trust-remote-code), or a sparse, multi-vector or cross-encoder one.

Benchmarks (--benchmark, repeatable): a folder (or hub dataset owner/name/folder) of corpus.jsonl, queries.jsonl
and judgements qrels/<split>.tsv or .jsonl (for "test" also qrels.tsv, qrels.jsonl), in the BEIR layout or the
MLIR benchmarks' (yjoonjang/mlir-benchmarks), each file's layout read from its first line, integer grades; or a
file of aligned rows (id, query_<lang>, passage_<lang>: data/demo/test.jsonl), every version of the gold passage
relevant. Parallel texts (MRC, alignment, uniformity): a `group` field, ids that name their language (q17/de,
q17-de, q17_de, de_q_005a), or for documents (doc_<lang>_<n>) the judgements of a group of parallel queries.

Metrics. Documents are ranked by the model's similarity (cosine; dot product where the model declares it), ties
by document id descending, as trec_eval ranks; every judged query counts.
  ndcg_at_k, recall_at_k, map_at_100, mrr_at_k (k = 10, 20, 100): trec_eval's ndcg_cut, recall, map_cut and
      recip_rank (0 past rank k), by pytrec_eval: grades are gains, >= 1 is relevant
  own_at_10: share of a query's top 10 in the query's own language
  mrc_at_k (k = 5, 10, 20): mean rank correlation (Yang et al., MRL 2024), aggregated as its reference code:
      rho_ab = Spearman's rho of parallel queries a and b's scores over the union of their top ks (pair left out if
      constant); RC(a) = mean of rho_ab over a's partners; MRC(l) = mean of RC(a) over language l's queries;
      mrc_at_k = 100 * mean_l MRC(l)
  peer_at_k (k = 20, 100): (Yang et al., SIGIR 2024) mean over queries of the p-value of a Kruskal-Wallis test of
      their relevant documents' ranks grouped by language (past k: k + 1); 1: none favoured
  alignment: (Wang and Isola 2020) mean ||f(x) - f(y)||^2 over translation pairs (x, y)
  uniformity: log mean exp(-2 ||f(x) - f(y)||^2) over all pairs of texts (unit vectors)
main_score is ndcg_at_10; per_query holds each query's metrics but MRC, alignment and uniformity."""

import functools
import hashlib
import io
import json
import math
import os
import re
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import torch

import checkpoint
import losses
from checkpoint import BadInput, Parser, Range, entry_point, first_line

TEACHER = "sentence-transformers/all-MiniLM-L6-v2"
DEPTH = 100  # documents retrieved per query: the deepest cutoff (MAP@100, R@100, PEER@100)
MAX_UNIFORMITY_TEXTS = 4096  # uniformity looks at all pairs: cap the texts (seeded sample)
MANIFEST = ".evaluate-files.json"  # the files evaluate.py wrote in a folder, with their SHA-256
SIMILARITIES = ("cosine", "dot")  # what retrieval by inner product reproduces
REFUSED_MODULES = {  # module families that make no single dense vector per text
    "sentence_transformers.sparse_encoder": "a sparse (SPLADE-style) module",
    "sentence_transformers.multi_vector_encoder": "a multi-vector (late-interaction) module",
    "sentence_transformers.cross_encoder": "a cross-encoder module",
}
MRR_CUTOFFS, MRC_CUTOFFS, PEER_CUTOFFS = (10, 20, 100), (5, 10, 20), (20, 100)  # the MIMO paper's
COLUMNS = [  # (key in the result files, table header or None for the files only, format, trec_eval measure)
    ("ndcg_at_10", "nDCG@10", "{:.4f}", "ndcg_cut_10"),
    ("ndcg_at_20", "nDCG@20", "{:.4f}", "ndcg_cut_20"),
    ("ndcg_at_100", None, "{:.4f}", "ndcg_cut_100"),
    ("recall_at_10", None, "{:.4f}", "recall_10"),
    ("recall_at_20", "R@20", "{:.4f}", "recall_20"),
    ("recall_at_100", None, "{:.4f}", "recall_100"),
    ("mrr_at_10", "MRR@10", "{:.4f}", "recip_rank"),
    ("mrr_at_20", None, "{:.4f}", "recip_rank"),
    ("mrr_at_100", None, "{:.4f}", "recip_rank"),
    ("map_at_100", "MAP@100", "{:.4f}", "map_cut_100"),
    ("own_at_10", "own@10", "{:.4f}", None),
    ("mrc_at_5", None, "{:.2f}", None),
    ("mrc_at_10", "MRC@10", "{:.2f}", None),
    ("mrc_at_20", None, "{:.2f}", None),
    ("peer_at_20", None, "{:.4f}", None),
    ("peer_at_100", "PEER@100", "{:.4f}", None),
    ("alignment", "align", "{:.4f}", None),
    ("uniformity", "unif", "{:.4f}", None),
]
TREC_MEASURES = {key: measure for key, _, _, measure in COLUMNS if measure}
TABLE = [(key, header, fmt) for key, header, fmt, _ in COLUMNS if header]
MLIR = "yjoonjang/mlir-benchmarks/MMLIR"
PAPER_SUITE = [  # (column, --benchmark, headline metric): the MIMO paper's results table
    ("Belebele", f"{MLIR}/Belebele_test", "ndcg_at_20"), ("XQuAD", f"{MLIR}/XQuAD_test", "ndcg_at_20"),
    ("MLQA", f"{MLIR}/MLQA_test", "ndcg_at_20"), ("MultiEuP", f"{MLIR}/MultiEup_test", "ndcg_at_20"),
    ("NeuCLIR'22", "neuclir22", "ndcg_at_20"), ("NeuCLIR'23", "neuclir23", "ndcg_at_20"),
    ("MIRACL", "miracl", "ndcg_at_10"),  # mteb's main score; nDCG@20 is in the result file too
]  # fmt: skip


def build_parser():
    # fmt: off
    parser = Parser(__doc__)
    parser.add_argument("--model", action="extend", nargs="+", default=None,
                        help="models (several after one flag, or the flag repeated): our run directories, "
                             "sentence-transformers models or Hugging Face ids; default: runs/stage2, runs/stage2-* "
                             "(a --lam sweep in lambda order, then the baselines) and runs/stage1 where present, and "
                             "the demo teacher as the reference row")
    parser.add_argument("--benchmark", action="append", default=None,
                        help="benchmark (repeatable): a folder (BEIR or MLIR-benchmark layout), a hub dataset "
                             "owner/name[/folder], a file of aligned rows, or neuclir22 / neuclir23: NeuCLIR's "
                             "English topics against its Russian and Chinese corpora pooled, as the MIMO paper "
                             "(=DIR after it: local copies in the hub layout); default: data/demo/test.jsonl")
    parser.add_argument("--suite", choices=["paper"], default=None,
                        help="every benchmark of the MIMO paper's table, then the table in its shape (a row per "
                             "model, the headline metric per benchmark): Belebele, XQuAD, MLQA, MultiEuP (MLIR, "
                             "nDCG@20), NeuCLIR'22 and '23 pooled (nDCG@20), MIRACL-HN v2 on 10 languages through "
                             "mteb (nDCG@10); from the hub, so it needs a network or the datasets cached")
    parser.add_argument("--split", default="test",
                        help="which judgements of a benchmark folder: qrels/<split>.tsv or qrels/<split>.jsonl")
    parser.add_argument("--monolingual", action="store_true",
                        help="multi-monolingual retrieval, as for MIRACL: each query searches only the documents in "
                             "its language; scores per language and their mean")
    parser.add_argument("--no-language-metrics", action="store_true",
                        help="skip own@10, MRC, PEER, alignment and uniformity, for a corpus without `lang`")
    parser.add_argument("--parallel", default=None, help="parallel texts for alignment and uniformity (any "
                        "distill.py --data source); default: the benchmark's own parallel documents")
    parser.add_argument("--max-parallel", type=Range(int, 1), default=2000,
                        help="at most this many --parallel pairs, a seeded sample")
    group = parser.add_argument_group("encoding")
    group.add_argument("--no-prompts", action="store_true", help="no prompt for any text (as the MIMO paper's "
                       "scripts); default: each model's own sentence-transformers 'query' and 'document' prompts")
    group.add_argument("--query-prompt", default=None, help="prompt for every model's queries instead of its own")
    group.add_argument("--document-prompt", default=None, help="prompt for every model's documents instead of its own")
    group.add_argument("--max-length", type=Range(int, 1), default=None,
                       help="max tokens per text for every model; default: each model's own (its max_seq_length)")
    group.add_argument("--trust-remote-code", action="store_true",
                       help="let models run the code their repository ships (custom modules or architectures)")
    group.add_argument("--batch-size", type=Range(int, 1), default=64, help="texts per forward pass when embedding")
    group.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                       help="dtype every model's weights are loaded in; auto: as SentenceTransformer(model) loads "
                            "them (the checkpoint's own dtype), which gives sentence-transformers' own numbers")
    group.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                       help="auto: CUDA if there is a GPU, else Apple's mps, else the CPU")
    group = parser.add_argument_group("retrieval and output")
    group.add_argument("--query-chunk", type=Range(int, 1), default=1024,
                       help="queries scored at once; with --doc-chunk it bounds the score block in memory")
    group.add_argument("--doc-chunk", type=Range(int, 1), default=65536,
                       help="documents scored at once; a (query-chunk x doc-chunk) fp32 block is the largest temporary")
    group.add_argument("--cache-dir", default="runs/eval_cache",
                       help="embeddings per (model files, prompt, max length, texts), reused when nothing changed")
    group.add_argument("--no-cache", action="store_true", help="always embed afresh, and write nothing to --cache-dir")
    group.add_argument("--out-dir", "--output-dir", default="runs/eval",
                       help="folder of the result files (one per model and benchmark), results.json and au.png")
    group.add_argument("--save-run", nargs="?", const="", default=None, metavar="DIR",
                       help="write each (model, benchmark) top 100 as a TREC run file, <benchmark>/<model>.trec, "
                            "under DIR, or under --out-dir when DIR is left out")
    group.add_argument("--seed", type=Range(int, 0, 2**32 - 1), default=0,
                       help="seed of the uniformity and --parallel samples")
    # fmt: on
    return parser


def get_args(argv=None):
    args = build_parser().parse_args(argv)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", args.split):
        raise BadInput(f"--split must be a plain name such as test or dev, got '{args.split}'")
    if args.no_prompts and (args.query_prompt is not None or args.document_prompt is not None):
        raise BadInput("--no-prompts and --query-prompt/--document-prompt contradict each other; give one of them")
    if args.monolingual and args.no_language_metrics:
        raise BadInput("--monolingual needs every document's and query's language; drop --no-language-metrics")
    return args


# ---------------------------------------------------------------------------
# Exact top-k by inner product in trec_eval's order: score, then document id (strcmp), descending. Hand-written:
# torch.topk and vector indexes keep an arbitrary subset of tied scores; a (Q, N) matrix of 10^6 documents won't fit.


def id_ranks(ids):
    """(N,) int64: each id's place in ascending code-point order (strcmp on UTF-8), the tie-break key."""
    return torch.tensor(sorted(range(len(ids)), key=ids.__getitem__), dtype=torch.long).argsort()


def trec_order(scores, rank):
    """scores, rank: (Q, C) -> (Q, C) column order, by score descending, then by id rank descending."""
    by_id = rank.argsort(dim=1, descending=True)
    by_score = scores.gather(1, by_id).argsort(dim=1, descending=True, stable=True)  # stable: keeps the id order
    return by_id.gather(1, by_score)


def top_k(scores, rank, k):
    """scores (Q, C), rank (C,) -> scores, columns (Q, k): each row's first k <= C in trec_eval's order.
    subtle: topk keeps an arbitrary subset of the scores tied with the k-th; asking for k + 1 finds the rare rows
    where more tie than fit without another (Q, C) pass (40% of the matmul's time on CPU, bench/bench_retrieval.py)."""
    values, columns = scores.topk(min(k + 1, scores.shape[1]), dim=1)
    if values.shape[1] > k:
        crowded = (values[:, k] == values[:, k - 1]).nonzero().squeeze(1)
        values, columns = values[:, :k].contiguous(), columns[:, :k].contiguous()
        if len(crowded):
            columns[crowded] = full = trec_order(scores[crowded], rank.expand(len(crowded), -1))[:, :k]
            values[crowded] = scores[crowded].gather(1, full)
    order = trec_order(values, rank[columns])
    return values.gather(1, order), columns.gather(1, order)


@torch.no_grad()
def retrieve(q, d, doc_rank, k, query_chunk=1024, doc_chunk=65536):
    """q: (Q, D), d: (N, D), doc_rank: (N,) id_ranks, one device -> scores, document indices (Q, min(k, N)) on CPU.
    Each block's top k merges into its queries' running top k: the top k of their union is exact, ties included."""
    k = min(k, d.shape[0])
    # one score block, reused: on CPU 8% faster than a fresh 256 MB one per chunk (bench_retrieval.py, N = 10^6)
    buffer = torch.empty(min(query_chunk, q.shape[0]) * min(doc_chunk, d.shape[0]), device=q.device)
    out = []  # per query chunk: (scores, indices) on CPU
    for start in range(0, q.shape[0], query_chunk):
        block_q = q[start : start + query_chunk]  # (q, D)
        best_scores = torch.empty(len(block_q), 0, device=q.device)  # (q, <=k) running top k
        best_index = torch.empty(len(block_q), 0, dtype=torch.long, device=q.device)
        for doc_start in range(0, d.shape[0], doc_chunk):
            block_d = d[doc_start : doc_start + doc_chunk]  # (c, D)
            block = buffer[: len(block_q) * len(block_d)].view(len(block_q), len(block_d))
            scores = torch.mm(block_q, block_d.T, out=block)  # (q, c)
            scores, columns = top_k(scores, doc_rank[doc_start : doc_start + doc_chunk], min(k, scores.shape[1]))
            candidates = torch.cat([best_scores, scores], 1)  # (q, <=2k)
            candidate_index = torch.cat([best_index, columns + doc_start], 1)
            order = trec_order(candidates, doc_rank[candidate_index])[:, :k]
            best_scores, best_index = candidates.gather(1, order), candidate_index.gather(1, order)
        out.append((best_scores.cpu(), best_index.cpu()))
    return torch.cat([scores for scores, _ in out]), torch.cat([index for _, index in out])


# ---------------------------------------------------------------------------
# Metrics: the ranking ones are trec_eval's (pytrec_eval); no library computes the language-bias ones, written here.


def ranking_metrics(rankings, qrels):
    """{query id: [doc id, best first]}, {query id: {doc id: grade}} -> {query id: {TREC_MEASURES key: value}}."""
    # trec_eval sorts by score: scores falling with the rank keep our order, whose ties are already settled
    run = {query_id: {doc: -float(r) for r, doc in enumerate(ranking)} for query_id, ranking in rankings.items()}
    measures = {"ndcg_cut.10,20,100", "recall.10,20,100", "recip_rank", "map_cut.100"}
    import pytrec_eval  # here, not at the top: bench/bench_retrieval.py times retrieve() where it is not installed

    found = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    out = {query_id: {key: found[query_id][name] for key, name in TREC_MEASURES.items()} for query_id in rankings}
    for values, k in ((values, k) for values in out.values() for k in MRR_CUTOFFS):
        if values[f"mrr_at_{k}"] < 1 / k:  # recip_rank also counts a first relevant document past rank k
            values[f"mrr_at_{k}"] = 0.0
    return out


def own_language_share(ranking_langs, query_lang, k):
    top = ranking_langs[:k]
    return sum(lang == query_lang for lang in top) / len(top) if top else 0.0


def kruskal_wallis(groups):
    """(H, p-value) of g >= 2 groups by scipy.stats.kruskal. subtle: all values equal (tie correction 0), where
    scipy raises, tells no group apart: p = 1, as in the MIMO reference code."""
    if len({value for group in groups for value in group}) <= 1:
        return 0.0, 1.0
    import scipy.stats

    return tuple(float(value) for value in scipy.stats.kruskal(*groups))


def peer_groups(ranking, judged, doc_lang, k):
    """{lang: ranks, past k as k + 1} of a query's relevant documents; those not in doc_lang (no corpus) left out."""
    position, groups = {doc: r for r, doc in enumerate(ranking[:k], 1)}, {}
    for doc in (doc for doc, grade in judged.items() if grade > 0 and doc in doc_lang):
        groups.setdefault(doc_lang[doc], []).append(position.get(doc, k + 1))
    return groups


def spearman(x, y):
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    constant = len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0
    import scipy.stats

    return float("nan") if constant else float(scipy.stats.spearmanr(x, y).statistic)


def mrc(query_emb, doc_emb, top, groups, query_langs):
    """MRC x 100 (module docstring) -> (overall, {lang: value}, queries used, pairs used). query_emb: (Q, D),
    doc_emb: (N, D), top: (Q, k); groups: lists of query indices that translate each other."""
    # subtle: numpy only; torch's small matmuls between scipy's made two thread pools fight: 9 s, not 0.6 s, on the demo
    query_emb, doc_emb, top = query_emb.numpy(), doc_emb.numpy(), top.numpy()
    per_query, pairs = {}, 0  # query index -> rho with each of its partners
    for a, b in ((a, b) for group in groups for i, a in enumerate(group) for b in group[i + 1 :]):
        union = np.union1d(top[a], top[b])  # (|U|,) sorted document indices
        rho = spearman(doc_emb[union] @ query_emb[a], doc_emb[union] @ query_emb[b])
        if not math.isnan(rho):
            pairs += 1
            per_query.setdefault(a, []).append(rho)
            per_query.setdefault(b, []).append(rho)
    by_lang = {}
    for a, rhos in per_query.items():
        by_lang.setdefault(query_langs[a], []).append(sum(rhos) / len(rhos))  # RC(a)
    per_lang = {lang: 100 * sum(values) / len(values) for lang, values in sorted(by_lang.items())}
    overall = sum(per_lang.values()) / len(per_lang) if per_lang else None
    return overall, per_lang, len(per_query), pairs


def alignment(emb, left, right, chunk=65536):
    """Wang and Isola (2020), alpha = 2: mean ||emb[left[i]] - emb[right[i]]||^2 over pairs of unit rows,
    chunked: a million passages in 14 languages make 6.5M pairs, tens of GB as gathered copies."""
    total = 0.0
    for start in range(0, len(left), chunk):
        x, y = emb[left[start : start + chunk]], emb[right[start : start + chunk]]  # (c, D) each
        total += (x - y).pow(2).sum(1).double().sum().item()
    return total / len(left)


def uniformity(x, t=2.0):
    """Wang and Isola (2020): log mean_{i<j} exp(-t ||x_i - x_j||^2) over the N(N-1)/2 pairs of x: (N, D)."""
    return torch.pdist(x.double(), p=2).pow(2).mul(-t).exp().mean().log().item()


def alignment_uniformity(emb, langs, groups, seed):
    """Alignment of the pairs in groups (index lists into emb: (N, D), unit rows), uniformity of their texts."""
    pairs = [(a, b) for group in groups for i, a in enumerate(group) for b in group[i + 1 :]]
    if not pairs:
        return None
    left, right = torch.tensor([a for a, _ in pairs]), torch.tensor([b for _, b in pairs])  # (P,)
    members = sorted({index for group in groups for index in group})
    generator = torch.Generator().manual_seed(seed)

    def sampled_uniformity(indices):  # all pairs of 10^5 texts would not fit: a seeded sample
        if len(indices) > MAX_UNIFORMITY_TEXTS:
            indices = [indices[i] for i in torch.randperm(len(indices), generator=generator)[:MAX_UNIFORMITY_TEXTS]]
        return uniformity(emb[indices]) if len(indices) > 1 else None

    out = {"alignment": alignment(emb, left, right), "uniformity": sampled_uniformity(members)}
    out.update(alignment_per_language={}, uniformity_per_language={}, alignment_pairs=len(pairs))
    for lang in sorted({langs[index] for index in members}):
        mask = torch.tensor([langs[a] == lang or langs[b] == lang for a, b in pairs])
        out["alignment_per_language"][lang] = alignment(emb, left[mask], right[mask])
        out["uniformity_per_language"][lang] = sampled_uniformity([i for i in members if langs[i] == lang])
    return out


# ---------------------------------------------------------------------------
# Models, encoded by sentence-transformers, and the embedding cache


def config_json(path, filename):
    from sentence_transformers.util import load_file_path

    try:
        found = load_file_path(path, filename)
    except Exception:  # offline without a cached copy, or no valid repository: no such file
        found = None
    try:
        return None if found is None else json.loads(Path(found).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadInput(f"{found}: not a readable JSON file ({first_line(error)})") from None


def check_model(name, trust_remote_code):
    from sentence_transformers.util import import_module_class
    from transformers import AutoConfig

    path = checkpoint.resolve_model(name)
    modules = config_json(path, "modules.json")
    if modules is None:  # a plain Hugging Face model: sentence-transformers adds mean pooling
        try:
            AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as error:
            where = "local directory" if Path(path).is_dir() else "hub id, which needs a network or a copy in the cache"
            raise BadInput(f"cannot load model '{name}' ({where}): {first_line(error)}") from None
        return
    for number, module in enumerate(modules if isinstance(modules, list) else [], 1):
        kind = module.get("type", "?") if isinstance(module, dict) else "?"
        what = f"model '{name}': module {number} of its modules.json, type '{kind}',"
        hint = "" if trust_remote_code or kind.startswith("sentence_transformers.") else "; pass --trust-remote-code"
        try:
            module = import_module_class(kind, path, trust_remote_code=trust_remote_code).__module__
        except Exception as error:  # ImportError, ValueError (untrusted code), whatever custom code raises
            raise BadInput(f"{what} cannot be loaded by sentence-transformers here "
                           f"({first_line(error)}){hint}") from None  # fmt: skip
        for prefix, refused in REFUSED_MODULES.items():
            if module.startswith(prefix):
                raise BadInput(f"{what} is {refused}; evaluate.py scores dense single-vector models only")
    similarity = (config_json(path, "config_sentence_transformers.json") or {}).get("similarity_fn_name") or "cosine"
    if similarity not in SIMILARITIES:
        raise BadInput(f"model '{name}' declares the similarity '{similarity}'; evaluate.py ranks by cosine or "
                       "dot product only")  # fmt: skip


class LazyModel:
    """A SentenceTransformer loaded on first use: a model whose embeddings are all cached is never loaded."""

    def __init__(self, name, args, device):
        self.name, self.args, self.device = name, args, device

    @functools.cached_property
    def model(self):
        from sentence_transformers import SentenceTransformer

        args, dtypes = self.args, {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
        kwargs = {"dtype": dtypes[args.precision]} if args.precision in dtypes else None
        try:
            model = SentenceTransformer(checkpoint.resolve_model(self.name), device=str(self.device),
                                        trust_remote_code=args.trust_remote_code, model_kwargs=kwargs)  # fmt: skip
        except Exception as error:  # whatever loading raises, one sentence
            raise BadInput(f"cannot load model '{self.name}' with sentence-transformers: {first_line(error)}") from None
        # a first module without a tokenizer (StaticEmbedding) states no limit
        limit = getattr(getattr(model[0], "tokenizer", None), "model_max_length", None)
        if args.max_length is not None and limit is not None and limit < 10**6 and args.max_length > limit:
            raise BadInput(f"--max-length {args.max_length} is more than model '{self.name}' takes ({limit} tokens)")
        if args.max_length is not None:
            model.max_seq_length = args.max_length
        return model.eval()  # its similarity was checked by check_model


def embed(lazy, texts, task, what, args):
    """texts -> ((N, D) float32 CPU embeddings as encode_query / encode_document give them, their settings), from
    --cache-dir while model files, prompt, length, precision and texts are unchanged; a damaged entry is redone."""
    import sentence_transformers
    from huggingface_hub import try_to_load_from_cache

    # the weights: a folder's file names, sizes, times (a retrained run re-embeds), or the hub snapshot's commit
    path = checkpoint.resolve_model(lazy.name)
    if Path(path).is_dir():
        files = sorted(p for p in Path(path).rglob("*") if p.is_file())
        weights = [str(Path(path).resolve())] + [(str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns)
                                                 for p in files]  # fmt: skip
    else:
        snapshot = try_to_load_from_cache(path, "config.json")
        weights = [path, snapshot if isinstance(snapshot, str) else None]
    digest = hashlib.sha1()
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    given = args.query_prompt if task == "query" else args.document_prompt
    identity = [f"sentence-transformers {sentence_transformers.__version__}", weights, task,
                "none" if args.no_prompts else given, args.max_length, args.precision, digest.hexdigest()]  # fmt: skip
    key = hashlib.sha1(json.dumps(identity).encode()).hexdigest()[:20]
    npy, meta = Path(args.cache_dir) / f"{key}.npy", Path(args.cache_dir) / f"{key}.json"
    if not args.no_cache and npy.is_file() and meta.is_file():
        try:
            settings, cached = json.loads(meta.read_text())["settings"], np.load(npy)
            if cached.ndim == 2 and cached.shape[0] == len(texts):
                print(f"  cache hit: {what} ({len(texts)} texts) from {npy}")
                return torch.from_numpy(cached), settings
        except (OSError, ValueError, KeyError, TypeError) as error:
            print(f"  cache entry {npy} is unreadable ({error}); embedding again")
    model = lazy.model
    # the prompt: none with --no-prompts, else the flag's, else encode_query's / encode_document's: the model's "query"
    # (documents: "document", "passage", "corpus"), its default, or none
    if args.no_prompts or given is not None:
        prompt = given or ""
    else:
        names = ("query",) if task == "query" else ("document", "passage", "corpus")
        name = next((name for name in names if name in model.prompts), model.default_prompt_name)
        prompt = model.prompts.get(name) or ""
    encode = model.encode_query if task == "query" else model.encode_document
    # the prompt is passed even when empty: "" also stops sentence-transformers' fall-back to a default prompt
    emb = encode(texts, prompt=prompt, batch_size=args.batch_size, convert_to_tensor=True, show_progress_bar=True)
    emb, dtype = emb.float().cpu(), next(model.parameters(), torch.empty(0)).dtype  # (N, D)
    settings = {"prompt": prompt, "max_length": model.max_seq_length, "similarity": model.similarity_fn_name,
                "dimension": emb.shape[1], "dtype": str(dtype).removeprefix("torch.")}  # fmt: skip
    if args.no_cache:
        return emb, settings
    ours = checkpoint.json_object(meta.parent, meta.name).get("written_by") == "evaluate.py"
    if (npy.exists() or meta.exists()) and not ours:
        print(f"  note: {npy.parent} holds files named like this cache entry that evaluate.py did not write; "
              "not cached")  # fmt: skip
        return emb, settings
    # the .json, which marks the entry as ours, before the .npy, which completes it
    record = {"written_by": "evaluate.py", "identity": identity, "settings": settings}
    atomic_write(meta, json.dumps(record, ensure_ascii=False).encode("utf-8"))
    buffer = io.BytesIO()
    np.save(buffer, emb.numpy())
    atomic_write(npy, buffer.getvalue())
    return emb, settings


# ---------------------------------------------------------------------------
# One model on one benchmark


def rank_queries(benchmark, doc_ids, query_ids, doc_emb, query_emb, args, device):
    """Each query's top DEPTH -> (document indices, scores) per query; --monolingual: in the query's language."""
    doc_rank, d = id_ranks(doc_ids).to(device), doc_emb.to(device)
    if not args.monolingual:
        scores, index = retrieve(query_emb.to(device), d, doc_rank, DEPTH, args.query_chunk, args.doc_chunk)
        return index.tolist(), scores.tolist()
    rankings, ranking_scores = [[] for _ in query_ids], [[] for _ in query_ids]
    query_langs = [benchmark.queries[query_id][1] for query_id in query_ids]
    for lang in sorted(set(query_langs)):
        qs = [i for i, query_lang in enumerate(query_langs) if query_lang == lang]
        ds = torch.tensor([j for j, doc_id in enumerate(doc_ids) if benchmark.corpus[doc_id][1] == lang])
        if len(ds) == 0:
            continue  # no document in this language: empty rankings, every metric 0
        on_device = ds.to(device)
        scores, local = retrieve(query_emb[qs].to(device), d[on_device], doc_rank[on_device], DEPTH,
                                 args.query_chunk, args.doc_chunk)  # fmt: skip
        for i, row, row_scores in zip(qs, ds[local].tolist(), scores.tolist()):
            rankings[i], ranking_scores[i] = row, row_scores
    return rankings, ranking_scores


def means(rows, keys):
    """{key: mean of row[key] over the rows holding it} for each of keys that some row holds."""
    return {key: sum(values) / len(values) for key in keys if (values := [row[key] for row in rows if key in row])}


def score_benchmark(benchmark, doc_ids, query_ids, rankings, monolingual, language_metrics):
    """Per-query metrics -> (means overall and per query language, PEER; {query id: metrics})."""
    doc_lang = {doc_id: lang for doc_id, (_, lang) in benchmark.corpus.items() if lang is not None}
    judged, ranked = {}, {}
    for i, query_id in enumerate(query_ids):
        judged[query_id], lang = benchmark.qrels[query_id], benchmark.queries[query_id][1]
        if monolingual:  # only documents in the query's language can be found, so only they are judged
            judged[query_id] = {doc: grade for doc, grade in judged[query_id].items() if doc_lang.get(doc) == lang}
        if judged[query_id]:
            ranked[query_id] = [doc_ids[j] for j in rankings[i]]
    metrics = ranking_metrics(ranked, {query_id: judged[query_id] for query_id in ranked})
    per_query, peers, no_peer = {}, 0, 0
    for query_id, ranking in ranked.items():
        query_lang = benchmark.queries[query_id][1]
        per_query[query_id] = values = {"lang": query_lang, **metrics[query_id]}
        if language_metrics and not monolingual:
            values["own_at_10"] = own_language_share([doc_lang.get(doc) for doc in ranking], query_lang, 10)
            for k in PEER_CUTOFFS:
                groups = peer_groups(ranking, judged[query_id], doc_lang, k)
                if len(groups) >= 2:
                    values[f"peer_at_{k}"] = kruskal_wallis(list(groups.values()))[1]
            if "peer_at_100" in values:
                peers += 1
            else:
                no_peer += 1  # relevant documents in fewer than two languages: nothing to compare
    keys, peer_keys = [*TREC_MEASURES, "own_at_10"], [f"peer_at_{k}" for k in PEER_CUTOFFS]
    per_language = {}
    for lang in sorted({values["lang"] for values in per_query.values() if values["lang"] is not None}):
        rows = [values for values in per_query.values() if values["lang"] == lang]
        per_language[lang] = {"queries": len(rows), **means(rows, keys + peer_keys)}
    # the mean over languages, as MIRACL reports it; else over queries, as trec_eval does
    result = means(per_language.values() if monolingual else per_query.values(), keys)
    result.update(queries_scored=len(per_query), per_language=per_language)
    if monolingual:
        result["queries_without_judgements_in_their_language"] = len(query_ids) - len(ranked)
    result.update(means(per_query.values(), peer_keys), peer_queries=peers, peer_skipped_one_language=no_peer)
    return result, per_query


def language_metrics_of(benchmark, doc_ids, query_ids, query_emb, doc_emb, doc_unit, rankings, parallel, lazy, args):
    """MRC, alignment and uniformity of one model on one benchmark -> (result entries, notes)."""
    result, notes, groups = {}, [], []
    if not args.monolingual:
        position = {query_id: i for i, query_id in enumerate(query_ids)}
        query_groups = [[position[query_id] for query_id in ids] for ids in benchmark.query_groups.values()]
        query_langs = [benchmark.queries[query_id][1] for query_id in query_ids]
        top = torch.tensor(rankings)  # (Q, <=DEPTH) for MRC
        result.update(mrc_at_10=None, mrc_per_language={}, mrc_queries=0, mrc_pairs=0)
        for k in MRC_CUTOFFS if query_groups else ():
            found = mrc(query_emb, doc_emb, top[:, :k], query_groups, query_langs)
            result[f"mrc_at_{k}"] = found[0]
            if k == 10:  # the table's cutoff: its languages and counts too
                result.update(zip(("mrc_per_language", "mrc_queries", "mrc_pairs"), found[1:]))
        if not query_groups:
            notes.append("MRC n/a: no parallel query groups (give queries a `group` field, or ids like 'q1/de' or "
                         "'de_q1')")  # fmt: skip
        elif result["mrc_at_10"] is None:
            notes.append("MRC n/a: every pair of parallel queries scores its top 10 with one constant value")
    if parallel:
        texts, langs = [], []
        for group in parallel:
            groups.append(list(range(len(texts), len(texts) + len(group))))
            texts.extend(group.values())
            langs.extend(group)
        emb = torch.nn.functional.normalize(embed(lazy, texts, "document", f"{lazy.name} --parallel texts", args)[0])
        source = "--parallel"
    elif benchmark.doc_groups:
        position = {doc_id: i for i, doc_id in enumerate(doc_ids)}
        emb, langs, source = doc_unit, [benchmark.corpus[i][1] for i in doc_ids], benchmark.layout["document_groups"]
        groups = [[position[doc_id] for doc_id in ids] for ids in benchmark.doc_groups.values()]
    au = alignment_uniformity(emb, langs, groups, args.seed) if groups else None
    if au:
        result.update(au, alignment_source=source)
    else:
        notes.append("alignment/uniformity n/a: no parallel documents (give them a `group` field or ids like "
                     "'d1/de', or judgements that name one document per language for each group of parallel "
                     "queries), or pass --parallel")  # fmt: skip
    return result, notes


def encoding_of(query, document):
    """What a result file says of how a model embedded, from embed()'s settings of its queries and its documents."""
    encoding = {"query_prompt": query.get("prompt"), "document_prompt": document.get("prompt")}
    encoding.update({key: document.get(key) for key in ("max_length", "similarity", "dimension")})
    return {**encoding, "precision": document.get("dtype")}


def trec_run(ranked, tag):
    """{query id: [(doc id, score), best first]} -> the lines of a TREC run file."""
    # 9 digits: every float32 score stays distinct
    return [f"{query_id} Q0 {doc} {rank} {score:.9g} {tag}\n" for query_id, docs in ranked.items()
            for rank, (doc, score) in enumerate(docs, 1)]  # fmt: skip


def evaluate_model_on(benchmark, lazy, parallel, args, device, language_metrics):
    """One (model, benchmark) -> (summary, {query id: metrics}, encoding settings, TREC run lines)."""
    if benchmark.mteb_task is not None:
        return evaluate_with_mteb(benchmark, lazy, args)
    doc_ids, query_ids, tick = list(benchmark.corpus), list(benchmark.queries), time.time()
    doc_texts, query_texts = [benchmark.corpus[i][0] for i in doc_ids], [benchmark.queries[i][0] for i in query_ids]
    doc_emb, doc_settings = embed(lazy, doc_texts, "document", f"{lazy.name} documents", args)  # (N, D)
    query_emb, query_settings = embed(lazy, query_texts, "query", f"{lazy.name} queries", args)  # (Q, D)
    encoding = encoding_of(query_settings, doc_settings)
    # what retrieval multiplies: unit vectors for cosine, the model's own vectors for a dot-product model
    doc_unit, query_unit = torch.nn.functional.normalize(doc_emb), torch.nn.functional.normalize(query_emb)
    doc_scoring, query_scoring = (doc_unit, query_unit) if encoding["similarity"] == "cosine" else (doc_emb, query_emb)
    seconds, tick = {"embed": time.time() - tick}, time.time()
    rankings, ranking_scores = rank_queries(benchmark, doc_ids, query_ids, doc_scoring, query_scoring, args, device)
    seconds["retrieve"], tick = time.time() - tick, time.time()
    result, per_query = score_benchmark(benchmark, doc_ids, query_ids, rankings, args.monolingual, language_metrics)
    notes = []
    if result.get("queries_without_judgements_in_their_language"):
        notes.append(f"{result['queries_without_judgements_in_their_language']} queries have no judged document "
                     "in their own language: skipped (--monolingual)")  # fmt: skip
    if language_metrics and args.monolingual:
        notes.append("own@10, MRC and PEER n/a with --monolingual: each query sees one language only")
    elif language_metrics and result["peer_queries"] == 0:
        notes.append("PEER n/a: no query has relevant documents in two or more languages")
    if language_metrics:
        found, more_notes = language_metrics_of(benchmark, doc_ids, query_ids, query_scoring, doc_scoring, doc_unit,
                                                rankings, parallel, lazy, args)  # fmt: skip
        result.update(found)
        notes += more_notes
    seconds["metrics"] = time.time() - tick
    result.update(seconds={key: round(value, 2) for key, value in seconds.items()}, notes=notes)
    ranked = {query_id: [(doc_ids[j], score) for j, score in zip(rankings[i], ranking_scores[i])]
              for i, query_id in enumerate(query_ids)}  # fmt: skip
    return result, per_query, encoding, trec_run(ranked, slug(lazy.name))


def evaluate_with_mteb(benchmark, lazy, args):
    """One model on an mteb task through mteb.evaluate: its retrieval, its scores per subset (as its leaderboard shows),
    their mean as the paper's; texts embedded by embed(); per query, ranking_metrics on mteb's rankings. -> as above."""
    import mteb
    from mteb.models.abs_encoder import AbsEncoder
    from mteb.models.model_meta import ModelMeta, ScoringFunction
    from mteb.types import PromptType

    tick, settings = time.time(), {}
    config = config_json(checkpoint.resolve_model(lazy.name), "config_sentence_transformers.json") or {}
    similarity = ScoringFunction(config.get("similarity_fn_name") or "cosine")  # check_model allowed cosine or dot

    class Encoder(AbsEncoder):  # mteb's model protocol, around embed()
        mteb_model_meta = ModelMeta.create_empty({"name": f"mimo/{slug(lazy.name)}", "similarity_fn_name": similarity})

        def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs):
            task = "query" if prompt_type == PromptType.query else "document"
            texts = [text for batch in inputs for text in batch["text"]]
            emb, settings[task] = embed(lazy, texts, task, f"{lazy.name} {hf_subset} {task}s", args)
            return emb.numpy()

    split = benchmark.layout["split"]
    with tempfile.TemporaryDirectory() as folder:
        found = mteb.evaluate(Encoder(), [benchmark.mteb_task], cache=None, overwrite_strategy="always",
                              prediction_folder=folder, encode_kwargs={"batch_size": args.batch_size},
                              show_progress_bar=False)  # fmt: skip
        predictions = json.loads(next(Path(folder).glob("*.json")).read_text(encoding="utf-8"))
    scored = found.task_results[0]
    rankings = {}  # by score, ties by document id descending: trec_eval's order, in which mteb scored them
    for subset in benchmark.layout["subsets"]:
        for query_id, scores in predictions[subset][split].items():
            ranked = sorted(scores, key=lambda doc: (scores[doc], doc), reverse=True)[:DEPTH]
            rankings[f"{subset}::{query_id}"] = [(f"{subset}::{doc}", scores[doc]) for doc in ranked]
    judged = {query_id: benchmark.qrels[query_id] for query_id in rankings if query_id in benchmark.qrels}
    metrics = ranking_metrics({q: [doc for doc, _ in rankings[q]] for q in judged}, judged)
    per_query = {query_id: {"lang": benchmark.queries[query_id][1], **values} for query_id, values in metrics.items()}
    per_language = {entry["hf_subset"]: entry for entry in scored.scores[split]}
    keys = [key for key, *_ in COLUMNS if key in TREC_MEASURES and all(key in v for v in per_language.values())]
    per_language = {lang: {key: entry[key] for key in keys} for lang, entry in per_language.items()}
    result = {key: sum(values[key] for values in per_language.values()) / len(per_language) for key in keys}
    result.update(queries_scored=len(per_query), per_language=per_language, peer_queries=0, notes=[
        f"scored by mteb {scored.mteb_version} on {scored.task_name} (dataset revision {scored.dataset_revision}), "
        f"each of {len(per_language)} languages alone; the mean over languages"])  # fmt: skip
    result.update(mteb={"task": scored.task_name, "dataset_revision": scored.dataset_revision,
                        "mteb_version": scored.mteb_version})  # fmt: skip
    result["seconds"] = {"embed": round(time.time() - tick, 2), "retrieve": 0.0, "metrics": 0.0}
    encoding = encoding_of(settings.get("query", {}), settings.get("document", {}))
    return result, per_query, encoding, trec_run(rankings, slug(lazy.name))


# ---------------------------------------------------------------------------
# Output: files evaluate.py owns, the result files, the table, the plot


def slug(name):
    """Model or benchmark -> file name: path parts in [A-Za-z0-9._-], joined by "__": runs/stage2 -> runs__stage2."""
    parts = [part for part in re.split(r"[/\\]+", name) if part not in ("", ".", "..")]
    return "__".join(re.sub(r"[^A-Za-z0-9._-]+", "_", part) for part in parts) or "_"


def atomic_write(path, content):
    """A fresh name beside `path`, renamed: never half a file; "xb" reuses no name and, unlike tempfile, keeps umask."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".evaluate-{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp")
    with open(tmp, "xb") as f:
        f.write(content)
    os.replace(tmp, path)


class OwnedFolder:
    """A folder evaluate.py writes into; MANIFEST there lists each file it wrote, with its kind and SHA-256."""

    def __init__(self, root, flag):
        """Checked before anything loads: writable, outside every training run (whose next checkpoint replaces its
        folder whole), and locked as training locks its run, so no two writers share it."""
        self.root, self.flag = Path(root), flag
        self.resolved = resolved = checkpoint.writable_folder(flag, root)
        run = next((folder for folder in [resolved, *resolved.parents] if checkpoint.marker_of(folder)), None)
        if run is not None:
            raise BadInput(f"{flag} '{root}' is or sits inside the training run '{run}', whose next checkpoint "
                           f"replaces that folder whole; choose another {flag}")  # fmt: skip
        self.lock = checkpoint.lock_run_dir(resolved, flag)
        self.files = self.read_manifest()

    def read_manifest(self):
        if not (self.root / MANIFEST).exists():
            return {}
        try:
            files = json.loads((self.root / MANIFEST).read_text(encoding="utf-8"))["files"]
            assert all(isinstance(entry["sha256"], str) for entry in files.values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError, AssertionError):
            raise BadInput(f"{self.flag} '{self.root}': {MANIFEST} there is not a list written by evaluate.py; "
                           f"choose another {self.flag}") from None  # fmt: skip
        return files

    def ours(self, relative):
        """Whether `relative` may be (re)written: absent, or written by evaluate.py and unchanged since."""
        path = self.root / relative
        if not path.is_file() or relative not in self.files:
            return not path.exists()
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest() == self.files[relative]["sha256"]

    def require(self, relative):
        if not self.ours(relative):
            raise BadInput(f"{self.flag} '{self.root}' holds {relative}, which evaluate.py did not write (or which "
                           f"changed since); it is never replaced: move it or choose another {self.flag}")  # fmt: skip

    def write(self, relative, content, kind):
        self.require(relative)
        atomic_write(self.root / relative, content)
        self.record(relative, {"kind": kind, "sha256": hashlib.sha256(content).hexdigest()})

    def remove(self, relative):
        if (self.root / relative).exists() and self.ours(relative):
            (self.root / relative).unlink()
            self.record(relative, None)

    def record(self, relative, entry):
        # subtle: re-read first, so two runs writing one folder one after the other keep each other's entries
        self.files = {key: value for key, value in {**self.read_manifest(), relative: entry}.items() if value}
        atomic_write(self.root / MANIFEST, json.dumps({"files": self.files}, indent=1, sort_keys=True).encode())


def benchmark_info(benchmark, args):
    """What a result file says about its benchmark; `digest` tells two versions of one benchmark apart."""
    digest = hashlib.sha1()
    for part in (benchmark.corpus, benchmark.queries, benchmark.qrels):
        for key in sorted(part):
            digest.update(json.dumps([key, part[key]], ensure_ascii=False, sort_keys=True).encode("utf-8") + b"\n")
    info = {"name": benchmark.name, "split": benchmark.layout.get("split", args.split)}
    info["mode"] = benchmark.layout.get("mode") or ("monolingual" if args.monolingual else "MLIR")
    info.update(documents=len(benchmark.corpus), queries=len(benchmark.queries))
    info["languages"] = sorted({lang for _, lang in benchmark.corpus.values() if lang is not None})
    info.update(benchmark.stats, query_groups=len(benchmark.query_groups), document_groups=len(benchmark.doc_groups))
    return {**info, "layout": benchmark.layout, "digest": digest.hexdigest()[:16]}


def result_file(name, info, result, per_query, encoding, args, seconds):
    """One (model, benchmark) result, in the shape of an MTEB result file plus what MTEB lacks."""
    default = {"hf_subset": "default", "languages": info["languages"], "main_score": result.get("ndcg_at_10")}
    subsets = [{**default, **{key: result[key] for key, *_ in COLUMNS if key in result}}]
    for lang, values in result["per_language"].items():
        subsets.append({"hf_subset": lang, "languages": [lang], "main_score": values.get("ndcg_at_10"), **values})
        for key, per_lang in (("mrc_at_10", "mrc"), ("alignment", "alignment"), ("uniformity", "uniformity")):
            if lang in result.get(f"{per_lang}_per_language", {}):
                subsets[-1][key] = result[f"{per_lang}_per_language"][lang]
    path = checkpoint.resolve_model(name)
    document = {"task_name": info["name"], "model_name": name}
    document["model_path"] = str(Path(path).resolve()) if Path(path).is_dir() else path
    document.update(main_score_name="ndcg_at_10", evaluation_time=round(seconds, 2))
    document.update(written_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), scores={info["split"]: subsets})
    document["encoding"] = {**encoding, "trust_remote_code": args.trust_remote_code}
    return {**document, "benchmark": info, "summary": result, "per_query": per_query, "arguments": vars(args)}


def build_report(out, digests):
    """results.json's benchmarks from our result files in out: per folder its description, each model's summary
    and encoding at this run's version (digests) or else its newest file's; other versions are listed apart."""
    found = {}
    for relative, entry in sorted(out.files.items()):
        if entry["kind"] == "result" and out.ours(relative):
            try:
                document = json.loads((out.root / relative).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            found.setdefault(relative.split("/")[0], {})[document["model_name"]] = document
    report = {}
    for folder, documents in sorted(found.items()):
        digest = digests.get(folder, max(documents.values(), key=lambda doc: doc["written_at"])["benchmark"]["digest"])
        same = {name: doc for name, doc in documents.items() if doc["benchmark"]["digest"] == digest}
        models = {name: {**doc["summary"], "encoding": doc["encoding"], "written_at": doc["written_at"]}
                  for name, doc in same.items()}  # fmt: skip
        report[folder] = {**max(same.values(), key=lambda doc: doc["written_at"])["benchmark"], "models": models,
                          "models_on_another_version": sorted(set(documents) - set(same))}  # fmt: skip
    return report


def cells(result):
    return [fmt.format(result[key]) if result.get(key) is not None else "n/a" for key, _, fmt in TABLE]


def print_benchmark(entry, order):
    print(f"\n{entry['name']} ({entry['mode']}, split {entry['split']}: {entry['queries']} queries, "
          f"{entry['documents']} documents, {len(entry['languages'])} languages)")  # fmt: skip
    width = max(len("model"), *(len(name) for name in order))
    print(f"{'model':<{width}}  " + " ".join(f"{header:>8}" for _, header, _ in TABLE) + "  max len")
    for name in order:
        row = " ".join(f"{cell:>8}" for cell in cells(entry["models"][name]))
        print(f"{name:<{width}}  {row}  {entry['models'][name]['encoding'].get('max_length')!s:>7}")
    counts = [f"{entry['skipped_queries']} queries without judgements skipped",
              f"{entry['unknown_query_judgements']} judgements name unknown queries (dropped)",
              f"{entry['unknown_document_judgements']} name documents not in the corpus (kept as unretrievable, "
              "as trec_eval does)"]  # fmt: skip
    if entry["queries_without_relevant"]:
        counts.append(f"{entry['queries_without_relevant']} queries have no relevant document (scored 0)")
    print("  " + "; ".join(counts))
    for name in order:
        encoding = entry["models"][name]["encoding"]
        print(f"  {name}: query prompt {encoding['query_prompt']!r}, document prompt "
              f"{encoding['document_prompt']!r}, {encoding['similarity']}, {encoding['precision']}")  # fmt: skip
    for note in sorted({note for result in entry["models"].values() for note in result["notes"]}):
        print(f"  {note}")
    if entry["models_on_another_version"]:
        print("  not in this table, scored on another version of this benchmark: "
              + ", ".join(entry["models_on_another_version"]))  # fmt: skip


def print_paper_table(columns, models):
    """The paper's table: a row per model, a column per benchmark ({label: (report entry, headline metric)})."""
    headers = [f"{label} {next(h for k, h, _, _ in COLUMNS if k == key) or key}" for label, (_, key) in columns.items()]
    width = max(len("model"), *(len(name) for name in models))
    print("\nthe MIMO paper's table\n" + f"{'model':<{width}}  " + "  ".join(headers))
    for name in models:
        cells = [entry["models"].get(name, {}).get(key) for entry, key in columns.values()]
        print(f"{name:<{width}}  " + "  ".join(f"{'n/a' if v is None else f'{v:.4f}':>{len(h)}}"
                                               for v, h in zip(cells, headers)))  # fmt: skip


def au_points(models):
    """One au.png panel -> (points [(name, label, alignment, uniformity)] of the models with both, the MIMO runs in
    lambda order: a --lam sweep's path from lambda 0, distillation alone, to 1, XLCO alone)."""
    points, lams = [], {}
    for name, result in models.items():
        if result.get("alignment") is None or result.get("uniformity") is None:
            continue
        arguments, label = checkpoint.run_arguments(name), name
        if arguments.get("script") == "joint_train.py" and arguments.get("objective") == "mimo":
            lams[name], label = arguments["lam"], f"λ = {arguments['lam']:g}"
        elif arguments.get("script") == "distill.py":
            label = "stage 1"
        elif arguments.get("script") == "joint_train.py":  # a baseline: its objective's label (or name), its start
            objective = losses.OBJECTIVES.get(arguments.get("objective"))
            label = f"{objective.label if objective else arguments.get('objective')} from {arguments.get('init')}"
        if result.get("ndcg_at_10") is not None:
            label += f", nDCG@10 {result['ndcg_at_10']:.3f}"
        points.append((name, label, result["alignment"], result["uniformity"]))
    return points, sorted(lams, key=lambda name: (lams[name], name))


def plot_alignment_uniformity(report, out):
    """Write au.png into out, a panel per benchmark (lower-left is better: Wang and Isola 2020, Fig. 1); False, noted,
    where there is nothing to draw or no matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib is not installed, so no au.png (pip install matplotlib to get the plot)")
        return False
    panels = [(entry.get("name", folder), *au_points(entry["models"])) for folder, entry in report.items()]
    panels = [panel for panel in panels if panel[1]]  # the benchmark as the user named it, and its points
    if not panels:
        print("note: no alignment/uniformity values, so no au.png")
        return False
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for axis, (name, points, trajectory) in zip(axes[0], panels):
        where = {model_name: (x, y) for model_name, _, x, y in points}
        if len(trajectory) > 1:  # the sweep's path, lambda rising along it
            xs, ys = zip(*(where[model_name] for model_name in trajectory))
            axis.plot(xs, ys, color="tab:blue", linewidth=1, zorder=1, label="MIMO, lambda rising")
        middle = (min(x for x, _ in where.values()) + max(x for x, _ in where.values())) / 2
        for model_name, _, x, y in points:
            on_path = model_name in trajectory
            axis.scatter(x, y, color="tab:blue" if on_path else "tab:red", marker="o" if on_path else "s", zorder=2)
        axis.margins(0.3)  # room for the labels of the outermost points
        bottom, top = axis.get_ylim()
        # one label line (10 points of 8-point text) in data units, from the axes' height in points
        line = 10 * (top - bottom) / (axis.get_window_extent().height * 72 / figure.dpi)
        # subtle: a sweep's runs can sit closer than a line of text (lambda 0.2 and 1 on the demo), and labels point
        # inwards (so long ones stay inside): going up, each is raised at least a line above the one below it.
        floor = {True: -math.inf, False: -math.inf}
        for _, label, x, y in sorted(points, key=lambda point: point[3]):
            right_half = x > middle
            label_y = floor[right_half] = max(y, floor[right_half] + line)
            axis.annotate(label, (x, y), xytext=(-4 if right_half else 4, 4 + 10 * (label_y - y) / line),
                          textcoords="offset points", ha="right" if right_half else "left", fontsize=8)  # fmt: skip
        axis.set(title=name, xlabel="alignment (lower is better)", ylabel="uniformity (lower is better)")
        if len(trajectory) > 1:
            axis.legend(fontsize=8)
    figure.tight_layout()
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=120)
    plt.close(figure)
    out.write("au.png", png.getvalue(), "plot")
    print(f"wrote {out.root / 'au.png'}")
    return True


# ---------------------------------------------------------------------------


def default_models():
    """--model's default (its help= says which); a run holds a model once its config.json is written."""
    stage2, stage1 = Path("runs/stage2/config.json").is_file(), Path("runs/stage1/config.json").is_file()
    if not stage2:
        print("note: runs/stage2 holds no model yet (train it with joint_train.py); not evaluated")
    # a .tmp or .old folder is a checkpoint being swapped in, not a run
    others = {path.as_posix(): checkpoint.run_arguments(path) for path in Path("runs").glob("stage2-*")
              if path.suffix not in (".tmp", ".old") and (path / "config.json").is_file()}  # fmt: skip
    others = {path: arguments for path, arguments in others.items() if arguments.get("script") == "joint_train.py"}
    others = sorted(others, key=lambda run: (others[run].get("objective") != "mimo", others[run].get("lam", 0), run))
    if not stage1:
        print("note: runs/stage1 holds no model yet (train it with distill.py); not evaluated")
    return ["runs/stage2"] * stage2 + others + ["runs/stage1"] * stage1 + [TEACHER]


def plan_outputs(tasks, args, out, runs):
    """{benchmark name: folder}, once every file to write is absent or ours and no two models share a file name."""
    models = {}
    for name in args.model:
        if slug(name) in models:
            raise BadInput(f"--model '{name}' and --model '{models[slug(name)]}' would share the result file name "
                           f"'{slug(name)}'; give each model once")  # fmt: skip
        models[slug(name)] = name
    # a benchmark's folder: its name, with the split and the mode where not the default
    split = f".{args.split}" if args.split != "test" else ""
    folders = {b.name: slug(b.name) + split + ".monolingual" * args.monolingual for b in tasks}
    for benchmark in tasks:
        for model_slug, name in models.items():
            relative = f"{folders[benchmark.name]}/{model_slug}"
            out.require(f"{relative}.json")
            if (out.root / f"{relative}.json").exists():
                stored = checkpoint.json_object(out.root, f"{relative}.json").get("model_name")
                if stored != name:
                    raise BadInput(f"--out-dir '{out.root}' holds {relative}.json with the results of model "
                                   f"'{stored}', and model '{name}' would need that file name; choose another "
                                   "--out-dir")  # fmt: skip
            if runs is not None:
                runs.require(f"{relative}.trec")
        for ids, what in ((benchmark.queries, "query"), (benchmark.corpus, "document")) if runs is not None else ():
            spaced = next((text_id for text_id in ids if re.search(r"\s", text_id) or not text_id), None)
            if spaced is not None:
                raise BadInput(f"--save-run: {what} id {spaced!r} of benchmark '{benchmark.name}' is empty or holds "
                               "white space, which a TREC run's columns cannot carry")  # fmt: skip
    out.require("results.json")
    out.require("au.png")
    return folders


def main(argv=None):
    started = time.time()
    args = get_args(argv)
    args.model = args.model or default_models()
    if args.suite:
        args.benchmark = [*(args.benchmark or []), *(spec for _, spec, _ in PAPER_SUITE)]
    args.benchmark = args.benchmark or ["data/demo/test.jsonl"]
    print("arguments: " + json.dumps(vars(args)))
    language_metrics = not args.no_language_metrics

    # --- device: embedding and retrieval on the GPU when there is one; the dtype is each model's (--precision)
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    device = next(name for name, there in available.items() if there) if args.device == "auto" else args.device
    if not available[device]:
        raise BadInput(f"--device {device}: no {device} device is available here; use --device auto or cpu")
    device = torch.device(device)

    # --- output folders, benchmarks and models, all checked before any embedding starts
    out = OwnedFolder(args.out_dir, "--out-dir")
    runs = None
    if args.save_run is not None:
        same_folder = args.save_run == "" or checkpoint.writable_folder("--save-run", args.save_run) == out.resolved
        runs = out if same_folder else OwnedFolder(args.save_run, "--save-run")
    if not args.no_cache:
        checkpoint.writable_folder("--cache-dir", args.cache_dir)
    import benchmarks  # reads through datasets, which bench/bench_retrieval.py's timing of retrieve() does not need

    tasks = [benchmarks.load_benchmark(spec, need_lang=language_metrics, split=args.split) for spec in args.benchmark]
    for name in args.model:
        check_model(name, args.trust_remote_code)
    parallel = None
    if args.parallel and language_metrics:
        parallel = benchmarks.parallel_groups(args.parallel, args.max_parallel, args.seed)
    folders = plan_outputs(tasks, args, out, runs)
    infos = {benchmark.name: benchmark_info(benchmark, args) for benchmark in tasks}
    for benchmark in tasks:
        info = infos[benchmark.name]
        print(f"benchmark {benchmark.name}: {info['queries']} queries, {info['documents']} documents, languages "
              f"{' '.join(info['languages']) or 'unknown'}; read as {json.dumps(benchmark.layout)}")  # fmt: skip

    # --- each model on each benchmark, loaded only if an embedding is not cached (and dropped before the next is
    # loaded); each result file is written as soon as it is known
    for name in args.model:
        lazy = LazyModel(name, args, device)
        for benchmark in tasks:
            print(f"{name} on {benchmark.name}")
            tick = time.time()
            result, per_query, encoding, run = evaluate_model_on(benchmark, lazy, parallel, args, device,
                                                                 language_metrics)  # fmt: skip
            document = result_file(name, infos[benchmark.name], result, per_query, encoding, args, time.time() - tick)
            relative = f"{folders[benchmark.name]}/{slug(name)}"
            out.write(f"{relative}.json", json.dumps(document, indent=1, ensure_ascii=False).encode("utf-8"), "result")
            if runs is not None:
                runs.write(f"{relative}.trec", "".join(run).encode("utf-8"), "run")
                print(f"  wrote {runs.root / relative}.trec")
            print(f"  embed {result['seconds']['embed']:.1f} s, retrieve {result['seconds']['retrieve']:.2f} s, "
                  f"metrics {result['seconds']['metrics']:.1f} s; wrote {out.root / relative}.json")  # fmt: skip

    # --- the tables, results.json and au.png, rebuilt from every result file in --out-dir
    report = build_report(out, {folders[b.name]: infos[b.name]["digest"] for b in tasks})
    for benchmark in tasks:
        entry = report[folders[benchmark.name]]
        order = [name for name in args.model if name in entry["models"]]
        print_benchmark(entry, order + sorted(name for name in entry["models"] if name not in order))
    out.write("results.json", json.dumps({"benchmarks": report}, indent=1, ensure_ascii=False).encode(), "table")
    print(f"\nwrote {out.root / 'results.json'}")
    if not plot_alignment_uniformity(report, out):
        out.remove("au.png")  # rebuilt from what is there: nothing to plot, no stale plot
    for name in args.model:  # a run folder of ours shows its scores in its own model card
        lines, headers = [], "| " + " | ".join(header for _, header, _ in TABLE) + " |"
        for entry in (report[folders[b.name]] for b in tasks if name in report[folders[b.name]]["models"]):
            row = "| " + " | ".join(cells(entry["models"][name])) + " |"
            lines += [f"**{entry['name']}** ({entry['mode']}: {entry['queries']} queries, {entry['documents']} "
                      "documents)", "", headers, "|" + " ---: |" * len(TABLE), row, ""]  # fmt: skip
        if Path(name).is_dir() and checkpoint.add_results_to_card(name, lines, "Retrieval, scored by evaluate.py"):
            print(f"added its table to {Path(name) / 'README.md'}")
    if args.suite:
        names = dict(zip(args.benchmark, (folders[b.name] for b in tasks)))
        print_paper_table({label: (report[names[spec]], key) for label, spec, key in PAPER_SUITE}, args.model)
    print(f"done in {time.time() - started:.0f} s")
    return {benchmark.name: report[folders[benchmark.name]] for benchmark in tasks}


if __name__ == "__main__":
    entry_point(main)
