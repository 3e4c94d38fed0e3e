"""
Is a model any good for a mixed-language corpus, and why? Multilingual retrieval
(MLIR): one corpus that mixes languages, queries in any language.

    python evaluate.py                     # runs/stage2, runs/stage1 and the demo teacher on the demo's
                                           # 50 held-out rows (350 queries, 350 passages): ~1 min on 2 CPU cores
    python evaluate.py --model runs/stage2 --model intfloat/multilingual-e5-small \\
        --benchmark path/to/beir_dir --benchmark yjoonjang/mlir-benchmarks/MMLIR/xx
    python evaluate.py --benchmark miracl_dir --monolingual   # each query searches its own language only

Prints one table per benchmark, a row per model, and writes --out-dir (runs/eval/):
results.json (everything, per language too) and au.png (alignment against
uniformity, one point per model, lower-left is better; needs matplotlib).

Benchmarks: a BEIR-style directory (corpus.jsonl: _id, text, optional title, lang;
queries.jsonl: _id, text, lang; qrels/test.tsv, qrels.tsv or qrels.jsonl), the same
layout in a Hugging Face dataset (owner/name/folder), or a file of aligned rows
(id, query_<lang>, passage_<lang>) turned into the MLIR protocol: every language
version of every passage in one corpus, queries in every language, every version
of the gold passage relevant.

Metrics. Documents are ranked by cosine score, ties broken by document id
descending, as trec_eval does; every query that has judgements counts.
  nDCG@k     sum_{r<=k} g_r / log2(r + 1), g_r the grade of the document at rank r,
             over the same sum for the ideal order of all judged documents (trec_eval ndcg_cut)
  Recall@k   relevant documents in the top k / all relevant documents (grade >= 1)
  MRR@k      1 / rank of the first relevant document if it is in the top k, else 0
  MAP@100    sum of precision@r over the ranks r <= 100 holding a relevant document,
             over the number of relevant documents (trec_eval map_cut_100)
  own@10     share of a query's top 10 in the query's own language
  MRC@10     mean rank correlation (Yang et al., MRL 2024), aggregated as its reference code:
               rho_ab = Spearman's rho of the scores of parallel queries a and b over the
                        union of their two top 10s (a constant score vector: pair left out)
               RC(a)  = mean of rho_ab over a's parallel partners b        (per query)
               MRC(l) = mean of RC(a) over the queries a in language l    (per language)
               MRC@10 = 100 * mean over languages of MRC(l)
             A query with few partners weighs as much as one with many; on a fully
             parallel benchmark this equals the mean over the pairs involving each language.
  PEER@100   (Yang et al., SIGIR 2024) per query, the p-value of a Kruskal-Wallis test
             of the ranks of its relevant documents grouped by document language (ranks
             past 100 count as 101); the mean over queries. 1 = no language is favoured
  align      (Wang and Isola 2020) mean ||f(x) - f(y)||^2 over translation pairs (x, y)
  unif       log mean exp(-2 ||f(x) - f(y)||^2) over all pairs of texts
"""

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import scipy.stats
import torch

import data
import model as model_module
import retrieval
from data import BadInput

TEACHER = "sentence-transformers/all-MiniLM-L6-v2"
DEPTH = 100  # documents retrieved per query: the deepest cutoff (MAP@100, PEER@100)
MAX_UNIFORMITY_TEXTS = 4096  # uniformity looks at all pairs: cap the texts (seeded sample)
COLUMNS = [  # (results.json key, table header, format)
    ("ndcg@10", "nDCG@10", "{:.4f}"),
    ("ndcg@20", "nDCG@20", "{:.4f}"),
    ("recall@20", "R@20", "{:.4f}"),
    ("mrr@10", "MRR@10", "{:.4f}"),
    ("map@100", "MAP@100", "{:.4f}"),
    ("own@10", "own@10", "{:.4f}"),
    ("mrc@10", "MRC@10", "{:.2f}"),
    ("peer@100", "PEER@100", "{:.4f}"),
    ("alignment", "align", "{:.4f}"),
    ("uniformity", "unif", "{:.4f}"),
]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in --help, and the docstring's metric definitions kept as written, not reflowed."""


def get_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument(
        "--model",
        action="append",
        default=None,
        help="model to evaluate (repeat the flag for several): our output directory, a Hugging Face id or a sentence-transformers checkpoint; default: runs/stage2 and runs/stage1 where present, and the demo teacher as the reference row",
    )
    parser.add_argument(
        "--benchmark",
        action="append",
        default=None,
        help="benchmark (repeatable): BEIR-style directory, hub dataset id owner/name[/folder], or a file of aligned rows; default: data/demo/test.jsonl",
    )
    parser.add_argument(
        "--monolingual",
        action="store_true",
        help="multi-monolingual retrieval, as for MIRACL: each query searches only the documents in its language; scores per language and their mean",
    )
    parser.add_argument(
        "--no-language-metrics",
        action="store_true",
        help="skip own@10, MRC, PEER, alignment and uniformity, for a corpus whose documents carry no `lang`",
    )
    parser.add_argument(
        "--parallel",
        default=None,
        help="parallel texts for alignment and uniformity (any distill.py --data source); default: the benchmark's own parallel documents",
    )
    parser.add_argument(
        "--max-parallel", type=int, default=2000, help="at most this many --parallel pairs, a seeded sample"
    )
    parser.add_argument(
        "--query-prompt",
        default=None,
        help="text prepended to each query; default: the model's sentence-transformers 'query' prompt, else none",
    )
    parser.add_argument(
        "--document-prompt",
        default=None,
        help="text prepended to each document; default: the model's 'document' (or 'passage') prompt, else none",
    )
    parser.add_argument(
        "--pooling",
        default=None,
        choices=["mean", "cls", "last"],
        help="pooling for every model; default: each model's own config, else mean",
    )
    parser.add_argument(
        "--max-length", type=int, default=None, help="max tokens per text; default: each model's own (512 at most)"
    )
    parser.add_argument("--batch-size", type=int, default=64, help="texts per forward pass when embedding")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="autocast dtype for embedding; auto: bf16 on GPU, fp32 on CPU",
    )
    parser.add_argument(
        "--query-chunk",
        type=int,
        default=1024,
        help="queries scored at once; with --doc-chunk it bounds the score block in memory",
    )
    parser.add_argument(
        "--doc-chunk",
        type=int,
        default=65536,
        help="documents scored at once; a (query-chunk x doc-chunk) fp32 block is the largest temporary",
    )
    parser.add_argument(
        "--cache-dir",
        default="runs/eval_cache",
        help="embeddings per (model files, prompt, texts), reused when nothing changed",
    )
    parser.add_argument("--no-cache", action="store_true", help="always embed afresh, and write nothing to --cache-dir")
    parser.add_argument(
        "--out-dir", default="runs/eval", help="where results.json and au.png are written (replacing earlier ones)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for the uniformity and --parallel samples")
    args = parser.parse_args(argv)
    for flag in ("batch_size", "query_chunk", "doc_chunk", "max_parallel"):
        if getattr(args, flag) < 1:
            raise BadInput(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if args.max_length is not None and args.max_length < 1:
        raise BadInput(f"--max-length must be at least 1, got {args.max_length}")
    if args.monolingual and args.no_language_metrics:
        raise BadInput("--monolingual needs every document's and query's language; drop --no-language-metrics")
    return args


# ---------------------------------------------------------------------------
# Ranking metrics, as trec_eval computes them. `ranking` is a list of document ids,
# best first (no repeats); `judged` is {doc id: grade}, grade >= 1 relevant.


def ndcg(ranking, judged, k):
    """trec_eval ndcg_cut.k: DCG@k = sum_{r=1..k} g_r / log2(r + 1), g_r = max(grade, 0)
    of the document at rank r (0 if unjudged), over the DCG@k of the ideal order of
    all the query's judged documents; 0 when none is relevant."""
    dcg = sum(max(judged.get(doc, 0), 0) / math.log2(r + 1) for r, doc in enumerate(ranking[:k], 1))
    ideal = sorted((grade for grade in judged.values() if grade > 0), reverse=True)[:k]
    ideal_dcg = sum(grade / math.log2(r + 1) for r, grade in enumerate(ideal, 1))
    return dcg / ideal_dcg if ideal_dcg > 0 else 0.0


def recall(ranking, judged, k):
    """trec_eval recall.k: relevant documents in the top k / all relevant documents."""
    relevant = sum(grade > 0 for grade in judged.values())
    return sum(judged.get(doc, 0) > 0 for doc in ranking[:k]) / relevant if relevant else 0.0


def mrr(ranking, judged, k):
    """Reciprocal rank of the first relevant document, 0 if none is in the top k."""
    for r, doc in enumerate(ranking[:k], 1):
        if judged.get(doc, 0) > 0:
            return 1.0 / r
    return 0.0


def average_precision(ranking, judged, k):
    """trec_eval map_cut.k: sum of precision@r over relevant ranks r <= k, over all relevant."""
    relevant = sum(grade > 0 for grade in judged.values())
    hits, total = 0, 0.0
    for r, doc in enumerate(ranking[:k], 1):
        if judged.get(doc, 0) > 0:
            hits += 1
            total += hits / r
    return total / relevant if relevant else 0.0


def own_language_share(ranking_langs, query_lang, k):
    """Share of the top k (of fewer, if fewer were retrieved) in the query's language."""
    top = ranking_langs[:k]
    return sum(lang == query_lang for lang in top) / len(top) if top else 0.0


# ---------------------------------------------------------------------------
# Language-bias metrics: PEER (Kruskal-Wallis), MRC (Spearman), alignment, uniformity


def kruskal_wallis(groups):
    """Kruskal-Wallis H test of g >= 2 groups of numbers -> (H, p-value), by scipy.stats.kruskal.

    Pool the N values, rank them (mid-ranks for ties), R_i = rank sum of group i of size n_i:
        H = [12 / (N (N + 1)) * sum_i R_i^2 / n_i - 3 (N + 1)] / C,  C = 1 - sum_ties (t^3 - t) / (N^3 - N)
    Under the null hypothesis H ~ chi^2 with g - 1 degrees of freedom: p = P(chi^2_{g-1} > H).
    subtle: all values equal (C = 0), where scipy raises, nothing tells the groups apart:
    p = 1, as in the MIMO reference code.
    """
    if len({value for group in groups for value in group}) <= 1:
        return 0.0, 1.0
    result = scipy.stats.kruskal(*groups)
    return float(result.statistic), float(result.pvalue)


def peer_groups(ranking, judged, doc_lang, k):
    """Ranks of a query's relevant documents by document language, ranks past k set to k + 1.

    doc_lang: {doc id: lang}; relevant documents not in the corpus have no language and are left out.
    """
    position = {doc: r for r, doc in enumerate(ranking[:k], 1)}
    groups = {}
    for doc, grade in judged.items():
        if grade > 0 and doc in doc_lang:
            groups.setdefault(doc_lang[doc], []).append(position.get(doc, k + 1))
    return groups


def spearman(x, y):
    """Spearman's rho of x, y (n,): the Pearson correlation of their mid-ranks (scipy.stats.spearmanr);
    nan if either is constant, where no rank order exists."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(scipy.stats.spearmanr(x, y).statistic)


def mrc(query_emb, doc_emb, top, groups, query_langs):
    """Mean rank correlation (Yang et al., MRL 2024) x 100, aggregated as the MIMO reference code
    aggregates it -> (overall, {lang: value}, queries used, pairs used).

    query_emb: (Q, D), doc_emb: (N, D), top: (Q, k) indices of each query's top k;
    groups: lists of query indices that are translations of each other. For every
    pair (a, b) of a group, U = top_k(a) | top_k(b) and rho_ab = Spearman(s(a, U), s(b, U));
        RC(a)  = mean_b rho_ab over a's partners b (pairs whose rho is undefined left out),
        MRC(l) = mean of RC(a) over the queries a in language l,
        MRC    = 100 * mean_l MRC(l).
    """
    # subtle: all in numpy. Interleaving torch's small matmuls with scipy's (numpy's BLAS) made the
    # two thread pools spin against each other: 9 s instead of 0.6 s for the demo's 1,050 pairs.
    query_emb, doc_emb, top = query_emb.numpy(), doc_emb.numpy(), top.numpy()
    per_query = {}  # query index -> rho with each of its partners
    pairs = 0
    for group in groups:
        for i, a in enumerate(group):
            for b in group[i + 1 :]:
                union = np.union1d(top[a], top[b])  # (|U|,) sorted document indices
                rho = spearman(doc_emb[union] @ query_emb[a], doc_emb[union] @ query_emb[b])
                if math.isnan(rho):
                    continue
                pairs += 1
                per_query.setdefault(a, []).append(rho)
                per_query.setdefault(b, []).append(rho)
    if not per_query:
        return None, {}, 0, 0
    by_lang = {}
    for a, rhos in per_query.items():
        by_lang.setdefault(query_langs[a], []).append(sum(rhos) / len(rhos))  # RC(a)
    per_lang = {lang: 100 * sum(values) / len(values) for lang, values in sorted(by_lang.items())}
    return sum(per_lang.values()) / len(per_lang), per_lang, len(per_query), pairs


def alignment(emb, left, right, chunk=65536):
    """Wang and Isola (2020), alpha = 2: mean_i ||x_i - y_i||^2 over translation pairs
    x_i = emb[left[i]], y_i = emb[right[i]] of normalised embeddings emb: (N, D).

    Summed chunk by chunk: a million passages in 14 languages make 6.5M pairs, whose
    gathered (P, D) copies alone would take tens of GB."""
    total = 0.0
    for start in range(0, len(left), chunk):
        x, y = emb[left[start : start + chunk]], emb[right[start : start + chunk]]  # (c, D) each
        total += (x - y).pow(2).sum(1).double().sum().item()
    return total / len(left)


def uniformity(x, t=2.0):
    """Wang and Isola (2020): log mean_{i<j} exp(-t ||x_i - x_j||^2) over the N(N-1)/2 pairs of x: (N, D)."""
    return torch.pdist(x.double(), p=2).pow(2).mul(-t).exp().mean().log().item()


def alignment_uniformity(emb, langs, groups, seed):
    """Alignment over all translation pairs inside groups, uniformity over the grouped texts;
    overall and per language (pairs that involve the language, texts in it).

    emb: (N, D) normalised; langs: N languages; groups: lists of indices into emb.
    """
    pairs = [(a, b) for group in groups for i, a in enumerate(group) for b in group[i + 1 :]]
    if not pairs:
        return None
    left, right = torch.tensor([a for a, _ in pairs]), torch.tensor([b for _, b in pairs])  # (P,)
    members = sorted({index for group in groups for index in group})
    generator = torch.Generator().manual_seed(seed)

    def sampled_uniformity(indices):
        if len(indices) < 2:
            return None
        if len(indices) > MAX_UNIFORMITY_TEXTS:  # all pairs of 10^5 texts would not fit
            indices = [
                indices[i] for i in torch.randperm(len(indices), generator=generator)[:MAX_UNIFORMITY_TEXTS].tolist()
            ]
        return uniformity(emb[indices])

    out = {
        "alignment": alignment(emb, left, right),
        "uniformity": sampled_uniformity(members),
        "alignment_per_language": {},
        "uniformity_per_language": {},
        "alignment_pairs": len(pairs),
    }
    for lang in sorted({langs[index] for index in members}):
        mask = torch.tensor([langs[a] == lang or langs[b] == lang for a, b in pairs])
        out["alignment_per_language"][lang] = alignment(emb, left[mask], right[mask])
        out["uniformity_per_language"][lang] = sampled_uniformity([index for index in members if langs[index] == lang])
    return out


# ---------------------------------------------------------------------------
# Models and the embedding cache


def check_model(name):
    """Fail early, in one sentence, for a model that cannot be loaded (offline: not in the cache)."""
    from transformers import AutoConfig

    path = model_module.resolve_model(name)
    try:
        AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as error:
        where = (
            "local directory"
            if Path(path).is_dir()
            else "hub id, which needs a network or a copy in the Hugging Face cache"
        )
        raise BadInput(f"cannot load model '{name}' ({where}): {str(error).splitlines()[0]}") from None


def model_fingerprint(name):
    """What identifies a model's weights for the cache: file names, sizes and times of a
    local directory (a retrained run gets new embeddings), or the cached hub snapshot."""
    path = model_module.resolve_model(name)
    if Path(path).is_dir():
        files = sorted(p for p in Path(path).rglob("*") if p.is_file())
        return [str(Path(path).resolve())] + [
            (str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in files
        ]
    from huggingface_hub import try_to_load_from_cache

    snapshot = try_to_load_from_cache(path, "config.json")  # .../snapshots/<commit>/config.json
    return [path, snapshot if isinstance(snapshot, str) else None]


def model_prompts(name, args):
    """(query prompt, document prompt): the flags, else the model's sentence-transformers prompts."""
    prompts = model_module.read_sentence_transformers_config(model_module.resolve_model(name)).get("prompts", {})
    query = args.query_prompt if args.query_prompt is not None else prompts.get("query", "")
    document = (
        args.document_prompt
        if args.document_prompt is not None
        else prompts.get("document", prompts.get("passage", ""))
    )
    return query, document


def texts_digest(texts):
    digest = hashlib.sha1()
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    return digest.hexdigest()


def embed(lazy_encoder, name, texts, prompt, what, args, amp_dtype):
    """(N, D) float32 CPU normalised embeddings of texts, from the cache when the model's
    files, the prompt, pooling, max length and texts are unchanged."""
    identity = [model_fingerprint(name), prompt, args.pooling, args.max_length, str(amp_dtype), texts_digest(texts)]
    key = hashlib.sha1(json.dumps(identity).encode()).hexdigest()[:20]
    path = Path(args.cache_dir) / f"{key}.npy"
    if not args.no_cache and path.is_file():
        try:
            cached = np.load(path)
        except (OSError, ValueError) as error:  # a damaged file is embedded afresh, not trusted
            print(f"  cache file {path} is unreadable ({error}); embedding again")
        else:
            if cached.shape[0] == len(texts):
                print(f"  cache hit: {what} ({len(texts)} texts) from {path}")
                return torch.from_numpy(cached)
    emb = lazy_encoder().encode(
        texts, batch_size=args.batch_size, progress=True, autocast_dtype=amp_dtype, prompt=prompt
    )  # (N, D)
    if not args.no_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.npy")
        np.save(tmp, emb.numpy())
        os.replace(tmp, path)  # atomic: a crash never leaves half a cache file
    return emb


# ---------------------------------------------------------------------------
# One model on one benchmark


def rank_queries(benchmark, doc_ids, query_ids, doc_emb, query_emb, monolingual, args, device):
    """Top-DEPTH document indices of every query (a list per query), and the (Q, <=DEPTH) tensor form for MLIR."""
    doc_rank = retrieval.id_ranks(doc_ids).to(device)
    d = doc_emb.to(device)
    if not monolingual:
        _, index = retrieval.retrieve(query_emb.to(device), d, doc_rank, DEPTH, args.query_chunk, args.doc_chunk)
        return index.tolist(), index
    rankings = [[] for _ in query_ids]
    query_langs = [benchmark.queries[query_id][1] for query_id in query_ids]
    doc_langs = [benchmark.corpus[doc_id][1] for doc_id in doc_ids]
    for lang in sorted(set(query_langs)):
        qs = [i for i, query_lang in enumerate(query_langs) if query_lang == lang]
        ds = torch.tensor([j for j, doc_lang in enumerate(doc_langs) if doc_lang == lang], dtype=torch.long)
        if len(ds) == 0:
            continue  # no document in this language: empty rankings, every metric 0
        _, local = retrieval.retrieve(
            query_emb[qs].to(device), d[ds.to(device)], doc_rank[ds.to(device)], DEPTH, args.query_chunk, args.doc_chunk
        )
        for i, row in zip(qs, ds[local].tolist()):
            rankings[i] = row
    return rankings, None


def score_benchmark(benchmark, doc_ids, query_ids, rankings, monolingual, language_metrics):
    """Per-query ranking metrics -> overall means, per query language, and the PEER@100 p-values."""
    doc_lang = {doc_id: lang for doc_id, (_, lang) in benchmark.corpus.items() if lang is not None}
    per_query, p_values, no_peer, skipped = {}, [], 0, 0
    for i, query_id in enumerate(query_ids):
        judged, query_lang = benchmark.qrels[query_id], benchmark.queries[query_id][1]
        if monolingual:  # only documents in the query's language can be found, so only they are judged
            judged = {doc: grade for doc, grade in judged.items() if doc_lang.get(doc) == query_lang}
            if not judged:
                skipped += 1
                continue
        ranking = [doc_ids[j] for j in rankings[i]]
        values = {
            "ndcg@10": ndcg(ranking, judged, 10),
            "ndcg@20": ndcg(ranking, judged, 20),
            "recall@20": recall(ranking, judged, 20),
            "mrr@10": mrr(ranking, judged, 10),
            "map@100": average_precision(ranking, judged, 100),
        }
        if language_metrics and not monolingual:
            values["own@10"] = own_language_share([doc_lang.get(doc) for doc in ranking], query_lang, 10)
            groups = peer_groups(ranking, judged, doc_lang, DEPTH)
            if len(groups) >= 2:
                p_values.append(kruskal_wallis(list(groups.values()))[1])
            else:
                no_peer += 1  # relevant documents in fewer than two languages: nothing to compare
        per_query[query_id] = (query_lang, values)

    keys = [key for key, _, _ in COLUMNS if any(key in values for _, values in per_query.values())]
    per_language = {}
    for lang in sorted({lang for lang, _ in per_query.values() if lang is not None}):
        rows = [values for query_lang, values in per_query.values() if query_lang == lang]
        per_language[lang] = {"queries": len(rows), **{key: sum(row[key] for row in rows) / len(rows) for key in keys}}
    if monolingual:  # the mean over languages, as MIRACL reports it
        overall = (
            {key: sum(scores[key] for scores in per_language.values()) / len(per_language) for key in keys}
            if per_language
            else {}
        )
    else:  # the mean over queries, as trec_eval reports it
        overall = {key: sum(values[key] for _, values in per_query.values()) / len(per_query) for key in keys}
    result = {**overall, "queries_scored": len(per_query), "per_language": per_language}
    if monolingual:
        result["queries_without_judgements_in_their_language"] = skipped
    if p_values:
        result["peer@100"] = sum(p_values) / len(p_values)
    result["peer_queries"], result["peer_skipped_one_language"] = len(p_values), no_peer
    return result


def evaluate_model_on(benchmark, name, lazy_encoder, parallel, args, device, amp_dtype, language_metrics):
    """Everything results.json holds for one (model, benchmark); parallel: --parallel groups or None."""
    doc_ids, query_ids = list(benchmark.corpus), list(benchmark.queries)
    query_prompt, doc_prompt = model_prompts(name, args)
    tick = time.time()
    doc_emb = embed(
        lazy_encoder,
        name,
        [benchmark.corpus[i][0] for i in doc_ids],
        doc_prompt,
        f"{name} documents of {benchmark.name}",
        args,
        amp_dtype,
    )  # (N, D)
    query_emb = embed(
        lazy_encoder,
        name,
        [benchmark.queries[i][0] for i in query_ids],
        query_prompt,
        f"{name} queries of {benchmark.name}",
        args,
        amp_dtype,
    )  # (Q, D)
    seconds = {"embed": time.time() - tick}

    tick = time.time()
    rankings, top = rank_queries(benchmark, doc_ids, query_ids, doc_emb, query_emb, args.monolingual, args, device)
    seconds["retrieve"] = time.time() - tick
    tick = time.time()
    result = score_benchmark(benchmark, doc_ids, query_ids, rankings, args.monolingual, language_metrics)
    notes = []
    if result.get("queries_without_judgements_in_their_language"):
        notes.append(
            f"{result['queries_without_judgements_in_their_language']} queries have no judged document in their own language: skipped (--monolingual)"
        )
    if language_metrics and not args.monolingual:
        if result["peer_queries"] == 0:
            notes.append("PEER n/a: no query has relevant documents in two or more languages")
        position = {query_id: i for i, query_id in enumerate(query_ids)}
        groups = [[position[query_id] for query_id in ids] for ids in benchmark.query_groups.values()]
        query_langs = [benchmark.queries[query_id][1] for query_id in query_ids]
        value, per_lang, queries, pairs = (
            mrc(query_emb, doc_emb, top[:, :10], groups, query_langs) if groups else (None, {}, 0, 0)
        )
        result.update({"mrc@10": value, "mrc_per_language": per_lang, "mrc_queries": queries, "mrc_pairs": pairs})
        if value is None:
            notes.append(
                "MRC n/a: no parallel query groups (give queries a `group` field, or ids like 'q1/de', 'q1-de')"
            )
    elif args.monolingual:
        notes.append("own@10, MRC and PEER n/a with --monolingual: each query sees one language only")

    if language_metrics:
        if parallel:
            texts, langs, groups = [], [], []
            for group in parallel:
                groups.append(list(range(len(texts), len(texts) + len(group))))
                texts.extend(group.values())
                langs.extend(group)
            emb, source = (
                embed(lazy_encoder, name, texts, doc_prompt, f"{name} --parallel texts", args, amp_dtype),
                "--parallel",
            )
        elif benchmark.doc_groups:
            position = {doc_id: i for i, doc_id in enumerate(doc_ids)}
            emb, langs, source = (
                doc_emb,
                [benchmark.corpus[i][1] for i in doc_ids],
                "the benchmark's parallel documents",
            )
            groups = [[position[doc_id] for doc_id in ids] for ids in benchmark.doc_groups.values()]
        else:
            groups = []
        au = alignment_uniformity(emb, langs, groups, args.seed) if groups else None
        if au:
            result.update(au, alignment_source=source)
        else:
            notes.append(
                "alignment/uniformity n/a: no parallel documents (give them a `group` field or ids like 'd1/de'), or pass --parallel"
            )
    seconds["metrics"] = time.time() - tick
    result["seconds"] = {key: round(value, 2) for key, value in seconds.items()}
    result["notes"] = notes
    return result


# ---------------------------------------------------------------------------
# Output: the table and the alignment-uniformity plot


def format_table(results, models):
    """One fixed-width row per model; n/a where a metric does not apply."""
    width = max(len("model"), *(len(name) for name in models))
    lines = [f"{'model':<{width}}  " + " ".join(f"{header:>8}" for _, header, _ in COLUMNS)]
    for name in models:
        cells = [
            (fmt.format(results[name][key]) if results[name].get(key) is not None else "n/a") for key, _, fmt in COLUMNS
        ]
        lines.append(f"{name:<{width}}  " + " ".join(f"{cell:>8}" for cell in cells))
    return "\n".join(lines)


def plot_alignment_uniformity(report, path):
    """au.png: one labelled point per model (and benchmark panel); lower-left is better (Wang and Isola 2020, Fig. 1)."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib is not installed, so no au.png (pip install matplotlib to get the plot)")
        return None
    panels = [
        (name, entry["models"])
        for name, entry in report.items()
        if any(r.get("alignment") is not None for r in entry["models"].values())
    ]
    if not panels:
        print("note: no alignment/uniformity values, so no au.png")
        return None
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for axis, (name, models) in zip(axes[0], panels):
        points = {
            model_name: (r["alignment"], r["uniformity"])
            for model_name, r in models.items()
            if r.get("alignment") is not None and r.get("uniformity") is not None
        }
        middle = (min(x for x, _ in points.values()) + max(x for x, _ in points.values())) / 2
        for model_name, (x, y) in points.items():
            axis.scatter(x, y)
            # labels point inwards, so a long model name at the right edge stays inside the figure
            right_half = x > middle
            axis.annotate(
                model_name,
                (x, y),
                textcoords="offset points",
                xytext=(-4 if right_half else 4, 4),
                ha="right" if right_half else "left",
                fontsize=8,
            )
        axis.set(title=name, xlabel="alignment (lower is better)", ylabel="uniformity (lower is better)")
        axis.margins(0.3)  # room for the labels of the outermost points
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


# ---------------------------------------------------------------------------


def default_models():
    """runs/stage2 and runs/stage1 where they hold a model (config.json, written with the
    first checkpoint), then the demo teacher as the reference row."""
    models = []
    for path, script in (("runs/stage2", "joint_train.py"), ("runs/stage1", "distill.py")):
        if (Path(path) / "config.json").is_file():
            models.append(path)
        else:
            print(f"note: {path} holds no model yet (train it with {script}); not evaluated")
    return models + [TEACHER]


def main(argv=None):
    started = time.time()
    args = get_args(argv)
    args.model = args.model or default_models()
    args.benchmark = args.benchmark or ["data/demo/test.jsonl"]
    print("arguments: " + json.dumps(vars(args)))
    language_metrics = not args.no_language_metrics

    # --- device and precision: retrieval on the GPU when there is one
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = args.precision if args.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]

    # --- benchmarks and models, all checked before any embedding starts
    benchmarks = [data.load_benchmark(spec, need_lang=language_metrics) for spec in args.benchmark]
    for name in args.model:
        check_model(name)
    parallel = (
        data.parallel_groups(args.parallel, args.max_parallel, args.seed)
        if args.parallel and language_metrics
        else None
    )
    report = {}
    for benchmark in benchmarks:
        langs = sorted({lang for _, lang in benchmark.corpus.values() if lang is not None})
        report[benchmark.name] = {
            "mode": "monolingual" if args.monolingual else "MLIR",
            "documents": len(benchmark.corpus),
            "queries": len(benchmark.queries),
            "languages": langs,
            **benchmark.stats,
            "query_groups": len(benchmark.query_groups),
            "document_groups": len(benchmark.doc_groups),
            "models": {},
        }
        print(
            f"benchmark {benchmark.name}: {len(benchmark.queries)} queries, {len(benchmark.corpus)} documents, languages {' '.join(langs) or 'unknown'}"
        )

    # --- each model on each benchmark; a model is loaded only if some embedding is not cached
    for name in args.model:
        loaded = {}

        def lazy_encoder():
            if "encoder" not in loaded:
                loaded["encoder"] = model_module.freeze(model_module.Encoder(name, args.pooling, args.max_length)).to(
                    device
                )
            return loaded["encoder"]

        for benchmark in benchmarks:
            print(f"{name} on {benchmark.name}")
            result = evaluate_model_on(
                benchmark, name, lazy_encoder, parallel, args, device, amp_dtype, language_metrics
            )
            report[benchmark.name]["models"][name] = result
            print(
                f"  embed {result['seconds']['embed']:.1f} s, retrieve {result['seconds']['retrieve']:.2f} s, metrics {result['seconds']['metrics']:.1f} s"
            )
        loaded.clear()  # free the weights before the next model

    # --- the tables, results.json and au.png
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for benchmark in benchmarks:
        entry = report[benchmark.name]
        print(
            f"\n{benchmark.name} ({entry['mode']}: {entry['queries']} queries, {entry['documents']} documents, {len(entry['languages'])} languages)"
        )
        print(format_table(entry["models"], args.model))
        counts = [
            f"{entry['skipped_queries']} queries without judgements skipped",
            f"{entry['unknown_query_judgements']} judgements name unknown queries (dropped)",
            f"{entry['unknown_document_judgements']} name documents not in the corpus (kept as unretrievable, as trec_eval does)",
        ]
        if entry["queries_without_relevant"]:
            counts.append(f"{entry['queries_without_relevant']} queries have no relevant document (scored 0)")
        print("  " + "; ".join(counts))
        for note in sorted({note for result in entry["models"].values() for note in result["notes"]}):
            print(f"  {note}")
    results_path = out_dir / "results.json"
    results_path.write_text(
        json.dumps({"arguments": vars(args), "device": str(device), "benchmarks": report}, indent=2, ensure_ascii=False)
    )
    print(f"\nwrote {results_path}")
    plot = plot_alignment_uniformity(report, out_dir / "au.png")
    if plot:
        print(f"wrote {plot}")
    print(f"done in {time.time() - started:.0f} s")
    return report


if __name__ == "__main__":
    try:
        main()
    except BadInput as error:
        sys.exit(f"error: {error}")
