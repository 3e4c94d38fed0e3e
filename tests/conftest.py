"""Let a bare `pytest` import the top-level modules, and keep every test offline and seeded."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# No test may reach the network: hub look-ups fail at once instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="the generated-input tests try ten times as many inputs")


FUZZ_SCALE = [1]  # 10 with --slow; read when the test modules are imported, after pytest_configure


def pytest_configure(config):
    FUZZ_SCALE[0] = 10 if config.getoption("--slow") else 1


def examples(n):
    """hypothesis settings for n generated inputs (10 n with --slow), the same ones every run, no deadline, no
    example database in the repository."""
    from hypothesis import HealthCheck, settings

    return settings(max_examples=n * FUZZ_SCALE[0], deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))  # fmt: skip


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)
    yield


# ---------------------------------------------------------------------------
# Tiny models, built in the test's own temporary directory: no download, ~1 s each.

LATIN = "abcdefghijklmnopqrstuvwxyz0123456789"
CYRILLIC = "абвгдеёжзийклмнопрстуфхцчшщъыьэюя"
CHARACTERS = list(LATIN) + list(CYRILLIC) + list("的是水天气为什么")


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


# ---------------------------------------------------------------------------
# Running the scripts: argument lists on tiny models, subprocesses, logs


def distill_argv(models, rows, out_dir, cache_dir, *extra):
    """distill.py on the tiny models: 6 steps of 16 pairs, a checkpoint every 2 steps."""
    return ["--teacher", models["teacher"], "--student", models["student"], "--data", rows,
            "--out-dir", str(out_dir), "--cache-dir", str(cache_dir), "--dev-size", "4",
            "--per-device-batch-size", "16", "--max-length", "32", "--max-steps", "6", "--save-every", "2",
            "--log-every", "2", *extra]  # fmt: skip


def joint_argv(models, stage1, out_dir, *extra):
    """joint_train.py from a stage-1 run (see test_joint_train's fixture): 4 steps of 8 rows,
    gradient caching in mini-batches of 4, a checkpoint every 2 steps."""
    return ["--stage1", stage1["stage1"], "--student", models["student"], "--data", stage1["rows"],
            "--cache-dir", stage1["cache"], "--out-dir", str(out_dir), "--dev-size", "4",
            "--per-device-batch-size", "8", "--mini-batch-size", "4", "--max-length", "32", "--max-steps", "4",
            "--save-every", "2", "--log-every", "2", *extra]  # fmt: skip


def script_env(**extra):
    """The environment of a script run as a subprocess: offline, one thread (two processes may share 2 cores)."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1", **extra}


def run_script(*args, timeout=300, env=None):
    """`python <script> args...` from the repository root; the finished CompletedProcess."""
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env or script_env(), capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def torchrun(*args, timeout=240):
    """`torchrun --nproc_per_node 2 args...` on CPU (gloo); asserts it succeeded."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    result = subprocess.run(command, cwd=ROOT, env=script_env(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def read_log(out_dir):
    """The records of a run's log.jsonl, in order."""
    return [json.loads(line) for line in (Path(out_dir) / "log.jsonl").read_text().splitlines()]


def trained_steps(out_dir):
    """The steps that wrote a training log line (they carry a loss)."""
    return [record["step"] for record in read_log(out_dir) if "loss" in record]


def interrupt_after_step(args, out_dir, step, sig):
    """Start `python args...`, send it `sig` once it has logged training step `step` or
    later, and return its exit status (negative: killed by that signal)."""
    process = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=script_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    log = Path(out_dir) / "log.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        try:
            logged = [json.loads(line)["step"] for line in log.read_text().splitlines() if '"loss"' in line]
        except (OSError, json.JSONDecodeError):  # not written yet, or a line half written
            logged = []
        if logged and logged[-1] >= step:
            process.send_signal(sig)
            break
        time.sleep(0.01)
    _, stderr = process.communicate(timeout=120)
    return process.returncode, stderr
