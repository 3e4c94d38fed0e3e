"""
The teacher cache of distill.py and joint_train.py: teacher embeddings on disk (fp16, memory-mapped), so each unique
(teacher weights, precision, prompt, max length, pooling, text) is embedded once across epochs, runs and stages. An 8B
teacher's forward dominates training's cost, and no library keeps such a cache.
"""

import hashlib
import json
import os
import socket
import uuid
from pathlib import Path

import numpy as np
import torch
from huggingface_hub import try_to_load_from_cache

from checkpoint import resolve_model


def teacher_fingerprint(name_or_path, memo_dir=None):
    """A local folder: SHA-1 over its files' names and contents (hidden ones aside), so retraining in place gives new
    targets while copying or touching costs nothing; memo_dir/fingerprints.json keeps each file's digest by (path, size,
    mtime), as hashing an 8B model's 16 GB takes a minute. A hub id: the commit of its cached snapshot, or None."""
    path = resolve_model(name_or_path)
    if not Path(path).is_dir():
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
        key = f"{file}|{(stat := file.stat()).st_size}|{stat.st_mtime_ns}"
        if key not in memo:
            with open(file, "rb") as f:
                memo[key], changed = hashlib.file_digest(f, "sha1").hexdigest(), True
        digest.update(f"{relative.as_posix()}\0{memo[key]}\n".encode())
    if changed and memo_file is not None:
        memo_file.parent.mkdir(parents=True, exist_ok=True)
        (tmp := memo_file.with_name(f"{memo_file.name}.{os.getpid()}.tmp")).write_text(json.dumps(memo))
        os.replace(tmp, memo_file)  # whole or not at all; a lost race only means hashing again
    return {"content": digest.hexdigest()}


class TeacherCache:
    """One folder per (teacher_fingerprint(), precision, prompt, max length, dim, pooling), named in `meta.json`; bf16
    targets (precision: the teacher's compute dtype) differ from fp32 ones by far more than fp16 storage rounds. Each
    writer (host, process, random suffix) appends to its own `emb-<writer>.f16` (rows of D fp16 values) and
    `keys-<writer>.txt` (line i: SHA-1 of row i's text): torchrun ranks and side-by-side runs need no locks, and none
    appends to a crashed writer's file. Readers take the union, each file cut to whole rows with whole key lines."""

    def __init__(self, root, teacher_name, prompt, max_length, dim, pooling="mean", *, precision, fingerprint=None):
        weights = teacher_fingerprint(teacher_name, root) if fingerprint is None else fingerprint
        identity = dict(teacher=teacher_name, weights=weights, precision=precision, prompt=prompt,
                        max_length=max_length, dim=dim, pooling=pooling)  # fmt: skip
        self.folder = Path(root) / hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
        self.folder.mkdir(parents=True, exist_ok=True)
        if not (meta := self.folder / "meta.json").exists():
            meta.write_text(json.dumps(identity, indent=2))
        self.dim, self.prompt = dim, prompt
        writer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.emb_file, self.keys_file = self.folder / f"emb-{writer}.f16", self.folder / f"keys-{writer}.txt"
        self.rows, self.shards = {}, []  # text hash -> (shard index, row); memory-mapped (N, D) fp16, one per writer
        self.own = None  # index of this object's own shard, once it has added texts
        for keys_file in sorted(self.folder.glob("keys-*.txt")):
            emb_file = keys_file.with_name("emb-" + keys_file.name[len("keys-") : -len(".txt")] + ".f16")
            keys = keys_file.read_text().split("\n")[:-1]  # whole lines: a line cut short has no newline
            keys = keys[: emb_file.stat().st_size // (2 * dim) if emb_file.exists() else 0]  # whole rows
            if keys:
                self.map_shard(len(self.shards), emb_file, keys, 0)

    def map_shard(self, index, emb_file, new_keys, first_row):
        """(Re)map a writer's file as shard `index` (appended if new) and index its rows first_row.. by new_keys."""
        shard = np.memmap(emb_file, dtype=np.float16, mode="r", shape=(first_row + len(new_keys), self.dim))
        if index == len(self.shards):
            self.shards.append(shard)
        else:
            self.shards[index] = shard
        self.rows.update({key: (index, row) for row, key in enumerate(new_keys, first_row)})

    @staticmethod
    def key(text):
        return hashlib.sha1(text.encode("utf-8")).hexdigest()

    def missing(self, texts):
        """The unique texts that are not cached yet, in first-seen order."""
        return [text for text in dict.fromkeys(texts) if self.key(text) not in self.rows]

    def add(self, texts, embeddings):
        """Append (N, D) embeddings of texts; returns them as stored (fp16). Only the index stays in memory, rows are
        read back through the map, so a paper-scale cache (millions of 4096-d rows) costs disk, not RAM."""
        stored, keys = embeddings.detach().to("cpu", torch.float16), [self.key(text) for text in texts]
        with open(self.emb_file, "ab") as f:  # a row is synced before its key: a kill never leaves a key rowless
            f.write(stored.numpy().tobytes())
            f.flush()
            os.fsync(f.fileno())
        with open(self.keys_file, "a") as f:
            f.write("".join(key + "\n" for key in keys))
        if self.own is None:  # this object's first texts: its own file becomes a new shard
            self.own, first_row = len(self.shards), 0
        else:
            first_row = self.shards[self.own].shape[0]
        self.map_shard(self.own, self.emb_file, keys, first_row)
        return stored

    def get(self, texts):
        """(N, D) float32 CPU tensor for texts that are all cached."""
        vectors = [self.shards[shard][row] for shard, row in (self.rows[self.key(text)] for text in texts)]
        return torch.from_numpy(np.array(vectors, np.float16).reshape(-1, self.dim)).float()  # copies read-only rows

    def __len__(self):
        return len(self.rows)


def teacher_embed(teacher, cache, texts, batch_size, autocast_dtype=None):
    """(N, D) float32 CPU, normalised teacher embeddings of texts via the cache, with its prompt. subtle: fresh vectors
    are rounded to fp16 as stored, so a run finding its targets cached and one computing them (or resuming) agree."""
    if todo := cache.missing(texts):
        device = teacher.device
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            vectors = teacher.encode(todo, prompt=cache.prompt, batch_size=batch_size, convert_to_tensor=True,
                                     normalize_embeddings=True)  # fmt: skip
        cache.add(todo, vectors.float())
    return cache.get(texts)
