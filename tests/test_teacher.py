"""teacher.py: the teacher cache, keyed by the teacher's weights, precision, prompt and pooling."""

import os

import numpy as np
import pytest
import torch

from checkpoint import encode, freeze, load_model
from teacher import TeacherCache, teacher_embed, teacher_fingerprint

TEXTS = ["water is wet", "a much longer sentence about the weather today", "abc", "почему небо"]


def test_teacher_cache_round_trip_and_reuse(tiny_models, tmp_path):
    teacher = freeze(load_model(tiny_models["teacher"], max_length=32))
    dim = teacher.get_embedding_dimension()
    cache = TeacherCache(tmp_path, "t", "", 32, dim, precision="fp32")
    first = teacher_embed(teacher, cache, TEXTS + TEXTS[:1], batch_size=2)
    assert len(cache) == 4  # the repeated text is embedded once
    torch.testing.assert_close(first[0], first[4])
    torch.testing.assert_close(first, encode(teacher, TEXTS + TEXTS[:1], 4).half().float())  # stored as fp16

    reopened = TeacherCache(tmp_path, "t", "", 32, dim, precision="fp32")
    assert reopened.missing(TEXTS) == [] and len(reopened) == 4
    torch.testing.assert_close(reopened.get(TEXTS), first[:4])
    assert (
        TeacherCache(tmp_path, "t", "a prompt", 32, dim, precision="fp32").missing(TEXTS) == TEXTS
    )  # another prompt, another cache


@pytest.mark.parametrize("leftover", ["row without key", "half a row", "half a key line"])
def test_teacher_cache_survives_a_kill_mid_write(tmp_path, leftover):
    """A kill between writing rows and their keys leaves a row without its key, half
    a row, or half a key line. Reopened, the cache ignores the leftover, and texts
    added afterwards get their own vectors back, never the leftover's row."""
    cache = TeacherCache(tmp_path, "t", "", 8, 4, precision="fp32")
    first = cache.add(["a", "b"], torch.randn(2, 4))
    with open(cache.emb_file, "ab") as f:  # the killed writer's last, unfinished write
        f.write(np.full(3 if leftover == "half a row" else 4, 9, dtype=np.float16).tobytes())
    if leftover == "half a key line":
        with open(cache.keys_file, "a") as f:
            f.write(TeacherCache.key("x")[:20])
    reopened = TeacherCache(tmp_path, "t", "", 8, 4, precision="fp32")
    assert len(reopened) == 2 and reopened.missing(["a", "b", "c"]) == ["c"]
    added = reopened.add(["c", "d"], torch.randn(2, 4))
    torch.testing.assert_close(reopened.get(["a", "b", "c", "d"]), torch.cat([first, added]).float())
    again = TeacherCache(tmp_path, "t", "", 8, 4, precision="fp32")
    torch.testing.assert_close(again.get(["a", "b", "c", "d"]), torch.cat([first, added]).float())


def test_teacher_cache_of_another_pooling_is_another_cache(tmp_path):
    TeacherCache(tmp_path, "t", "", 8, 4, pooling="mean", precision="fp32").add(["a"], torch.randn(1, 4))
    assert TeacherCache(tmp_path, "t", "", 8, 4, pooling="cls", precision="fp32").missing(["a"]) == ["a"]
    assert TeacherCache(tmp_path, "t", "", 8, 4, pooling="mean", precision="fp32").missing(["a"]) == []


def test_teacher_cache_of_another_precision_is_another_cache(tmp_path):
    """bf16 targets are not fp32 targets: a GPU bf16 run never serves a CPU fp32 run, or back."""
    TeacherCache(tmp_path, "t", "", 8, 4, precision="fp32").add(["a"], torch.randn(1, 4))
    assert TeacherCache(tmp_path, "t", "", 8, 4, precision="bf16").missing(["a"]) == ["a"]
    assert TeacherCache(tmp_path, "t", "", 8, 4, precision="fp32").missing(["a"]) == []


def test_teacher_retrained_in_place_is_not_served_stale_targets(tiny_models, tmp_path):
    """A local teacher folder keyed by its files' contents: the same weights rewritten
    (new modification time) keep their cache; other weights saved to the same path
    start a new one, and embedding through it gives the new teacher's vectors."""
    import shutil

    from transformers import AutoModel

    folder = tmp_path / "teacher"
    shutil.copytree(tiny_models["teacher"], folder)
    teacher = freeze(load_model(str(folder), max_length=32))
    old = teacher_embed(teacher, TeacherCache(tmp_path / "cache", str(folder), "", 32, 32, precision="fp32"), TEXTS, 4)

    os.utime(folder / "config.json")  # touched, same bytes
    assert TeacherCache(tmp_path / "cache", str(folder), "", 32, 32, precision="fp32").missing(TEXTS) == []

    AutoModel.from_pretrained(tiny_models["same"]).save_pretrained(folder)  # "retrained": other weights, same place
    retrained = freeze(load_model(str(folder), max_length=32))
    cache = TeacherCache(tmp_path / "cache", str(folder), "", 32, 32, precision="fp32")
    assert cache.missing(TEXTS) == TEXTS
    new = teacher_embed(retrained, cache, TEXTS, 4)
    torch.testing.assert_close(new, encode(retrained, TEXTS, 4).half().float())
    assert not torch.allclose(new, old, atol=1e-2)


def test_hub_teacher_is_keyed_by_its_snapshot_commit(tmp_path, monkeypatch):
    """A hub id's fingerprint is the commit its cached snapshot came from (refs/main in the
    Hugging Face cache layout); a new commit of the same id starts a new teacher cache."""
    import huggingface_hub.constants

    repo = tmp_path / "hub" / "models--owner--teacher"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    folders = []
    for commit in ("a" * 40, "b" * 40):
        (repo / "snapshots" / commit).mkdir(parents=True)
        (repo / "snapshots" / commit / "config.json").write_text("{}")
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
        assert teacher_fingerprint("owner/teacher") == {"hub": "owner/teacher", "commit": commit}
        folders.append(TeacherCache(tmp_path / "cache", "owner/teacher", "", 8, 4, precision="fp32").folder)
    assert folders[0] != folders[1]
