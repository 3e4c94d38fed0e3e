"""Let a bare `pytest` import the top-level modules, and keep every test offline and seeded."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# No test may reach the network: hub look-ups fail at once instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)
    yield


# ---------------------------------------------------------------------------
# Tiny models, built in the test's own temporary directory: no download, ~1 s each.

CHARACTERS = (
    list("abcdefghijklmnopqrstuvwxyz0123456789") + list("абвгдеёжзийклмнопрстуфхцчшщъыьэюя") + list("的是水天气为什么")
)


def build_tiny_model(path, hidden=32, arch="bert", padding_side="right", seed=0, layers=2):
    """Write a randomly initialised tiny encoder (dropout on: the configs' default 0.1 for
    BERT) and a character-level WordPiece tokenizer to path; returns the path as a string.
    arch 'qwen3' builds a decoder whose tokenizer pads on the left, as Qwen3-Embedding does."""
    from transformers import BertConfig, BertModel, BertTokenizer, Qwen3Config, Qwen3Model

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + CHARACTERS + ["##" + c for c in CHARACTERS]
    # subtle: transformers 5 ignores vocab_file= here (it would keep only the five special
    # tokens, so every word would become [UNK]); the vocabulary goes in as a dict
    vocab = {token: index for index, token in enumerate(vocab)}
    tokenizer = BertTokenizer(vocab=vocab, padding_side=padding_side, model_max_length=128)
    torch.manual_seed(seed)
    if arch == "bert":
        config = BertConfig(
            vocab_size=len(vocab),
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            intermediate_size=2 * hidden,
            max_position_embeddings=128,
        )
        model = BertModel(config)
    else:
        config = Qwen3Config(
            vocab_size=len(vocab),
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=hidden // 4,
            intermediate_size=2 * hidden,
            max_position_embeddings=128,
        )
        model = Qwen3Model(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Two tiny BERT students of different widths and a tiny left-padded decoder."""
    root = tmp_path_factory.mktemp("models")
    return {
        "teacher": build_tiny_model(root / "teacher", hidden=32, seed=1),
        "student": build_tiny_model(root / "student", hidden=24, seed=2),
        "same": build_tiny_model(root / "same", hidden=32, seed=3),
        "decoder": build_tiny_model(root / "decoder", hidden=32, arch="qwen3", padding_side="left", seed=4),
    }


ROWS_LANGUAGES = ["en", "de", "ru", "zh"]


def write_rows(path, n=24, seed=0):
    """Aligned rows (query_<lang>/passage_<lang>) with made-up but distinct texts."""
    import json
    import random

    rng = random.Random(seed)
    words = ["water", "stone", "river", "cloud", "bread", "paper", "light", "glass", "metal", "green"]
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            topic = f"{rng.choice(words)} {rng.choice(words)} {i}"
            row = {"id": f"r{i}"}
            for lang in ROWS_LANGUAGES:
                row[f"query_{lang}"] = f"what about the {topic} in {lang}"
                row[f"passage_{lang}"] = f"the {topic} is described here in {lang}, with detail number {i * 7}"
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return str(path)
