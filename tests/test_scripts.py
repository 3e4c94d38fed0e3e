"""distill.py end to end, for a few steps on CPU, on tiny models built by the tests;
the refusals every script shares (one `error:` line, status 1, nothing written)."""

from pathlib import Path

import pytest
import torch
from conftest import distill_argv, read_log, run_script, trained_steps, write_rows
from safetensors.torch import load_file

import checkpoint
import distill
from data import BadInput


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    return write_rows(tmp_path_factory.mktemp("data") / "rows.jsonl", n=24)


def weights(out_dir):
    """The student's tensors and W of a run directory, by name."""
    state = load_file(Path(out_dir) / "model.safetensors")
    state["W"] = checkpoint.load_projection(out_dir)
    return state


def assert_same_weights(a, b):
    a, b = weights(a), weights(b)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)


def test_distill_writes_a_loadable_run(tiny_models, rows, tmp_path):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    history = distill.main(distill_argv(tiny_models, rows, tmp_path / "run", tmp_path / "cache", "--eval-every", "3"))
    out = tmp_path / "run"
    expected = {
        "model.safetensors",
        "modules.json",
        "projection.safetensors",
        "args.json",
        "log.jsonl",
        "training_state",
    }
    assert expected <= {p.name for p in out.iterdir()}
    assert checkpoint.load_projection(out).shape == (32, 24)  # (teacher dim, student dim)
    assert trained_steps(out) == [2, 4, 6]
    assert [r["step"] for r in read_log(out) if "dev_distance" in r] == [0, 3, 6]
    assert history["after"]["distance"] < history["before"]["distance"]  # it learned something
    assert SentenceTransformer(str(out), device="cpu").encode(["hello there"]).shape == (1, 24)
    assert AutoModel.from_pretrained(out).config.hidden_size == 24
    assert not (tmp_path / "run.tmp").exists() and not (tmp_path / "run.old").exists()


def test_mse_loss_and_no_projection(tiny_models, rows, tmp_path):
    models = {**tiny_models, "student": tiny_models["same"]}  # as wide as the teacher
    argv = distill_argv(models, rows, tmp_path / "run", tmp_path / "cache", "--distill-loss", "mse", "--no-projection")
    distill.main([*argv, "--max-steps", "2"])
    projection = checkpoint.load_projection(tmp_path / "run")
    torch.testing.assert_close(projection, torch.eye(32))  # fixed identity, untouched


def test_resume_after_the_step_4_checkpoint_matches_an_uninterrupted_run(tiny_models, rows, tmp_path, monkeypatch):
    """Run A goes straight through 6 steps. Run B stops right after writing its step-4
    checkpoint, is resumed with --resume, and must end with exactly A's weights, with
    every step logged once."""
    distill.main(distill_argv(tiny_models, rows, tmp_path / "a", tmp_path / "cache"))

    real_save = distill.Run.save

    def save_then_stop_at_4(run, step, *args, **kwargs):
        real_save(run, step, *args, **kwargs)
        if step == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(distill.Run, "save", save_then_stop_at_4)
    with pytest.raises(KeyboardInterrupt):
        distill.main(distill_argv(tiny_models, rows, tmp_path / "b", tmp_path / "cache"))
    monkeypatch.setattr(distill.Run, "save", real_save)
    assert trained_steps(tmp_path / "b") == [2, 4]

    distill.main(distill_argv(tiny_models, rows, tmp_path / "b", tmp_path / "cache", "--resume"))
    assert_same_weights(tmp_path / "a", tmp_path / "b")
    assert trained_steps(tmp_path / "b") == [2, 4, 6]  # no step logged twice


def test_refuses_to_touch_an_existing_run(tiny_models, rows, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    checkpoint.write_marker(out, "distill.py", "a run id")  # a run of ours
    (out / "precious.txt").write_text("mine")
    with pytest.raises(BadInput, match="already holds a run; pass --resume"):
        distill.main(distill_argv(tiny_models, rows, out, tmp_path / "cache"))
    assert sorted(p.name for p in out.iterdir()) == [checkpoint.MARKER, "precious.txt"]


def test_dimension_mismatch_without_projection(tiny_models, rows, tmp_path):
    with pytest.raises(BadInput, match="--no-projection needs equal dimensions"):
        distill.main(distill_argv(tiny_models, rows, tmp_path / "run", tmp_path / "cache", "--no-projection"))
    assert not (tmp_path / "run").exists()


BAD_INPUT = {  # case: (extra arguments, what the error line must say)
    "missing_file": (lambda tmp, rows: ["--data", str(tmp / "missing.tsv")], "missing.tsv' does not exist"),
    "bad_json": (lambda tmp, rows: ["--data", f"de={tmp / 'bad.jsonl'}"], "bad.jsonl:2: not valid JSON"),
    "unreachable_model": (
        lambda tmp, rows: ["--student", "nobody/no-such-model"],
        "cannot load model 'nobody/no-such-model'",
    ),
    "resume_nothing": (lambda tmp, rows: ["--resume"], "holds no run to resume"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_is_one_sentence_and_a_nonzero_exit(case, tiny_models, rows, tmp_path):
    (tmp_path / "bad.jsonl").write_text(
        '{"english": "fine line here", "non_english": "feine Zeile hier"}\n{"english": oops\n'
    )
    extra, expected = BAD_INPUT[case]
    result = run_script("distill.py", *distill_argv(tiny_models, rows, tmp_path / "run", tmp_path / "cache"),
                        *extra(tmp_path, rows))  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and expected in last, result.stderr
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------
# The run folder as a Hugging Face model: card, flags


def test_the_run_folder_is_a_published_model(tiny_models, rows, tmp_path):
    """The folder holds the model card, projection.safetensors and the training state in a
    subfolder, and loads as a sentence-transformers model."""
    argv = distill_argv(tiny_models, rows, tmp_path / "run", tmp_path / "cache")
    distill.main(argv)
    out = tmp_path / "run"
    card = (out / "README.md").read_text()
    assert f"| teacher | `{tiny_models['teacher']}` (frozen, English) |" in card
    assert f"base_model: {tiny_models['student']}" in card and "library_name: sentence-transformers" in card
    assert "- de\n- en\n- ru\n- zh" in card  # the languages trained on
    assert "| translation retrieval top-1, X -> English, in the student's space | " in card  # named, not a key
    assert (out / "projection.safetensors").is_file() and not (out / "curves.png").exists()
    assert (out / "training_state" / "trainer_state.pt").is_file() and not (out / "trainer_state.pt").exists()
    from sentence_transformers import SentenceTransformer

    assert SentenceTransformer(str(out), device="cpu").encode(["a b"]).shape == (1, 24)  # the folder is the model


def test_trainer_flag_names_are_aliases(tiny_models, rows, tmp_path):
    """Flags a Hugging Face Trainer user types by habit mean the same here."""
    argv = distill_argv(tiny_models, rows, tmp_path / "run", tmp_path / "cache")
    args = distill.get_args([*argv, "--learning-rate", "3e-4", "--num-train-epochs", "3", "--max-grad-norm", "0.5",
                             "--logging-steps", "7", "--save-steps", "9", "--warmup-ratio", "0.2",
                             "--output-dir", str(tmp_path / "other")])  # fmt: skip
    assert (args.lr, args.epochs, args.grad_clip, args.log_every, args.save_every, args.warmup) == (
        3e-4, 3, 0.5, 7, 9, 0.2,
    )  # fmt: skip
    assert args.out_dir == str(tmp_path / "other")


@pytest.mark.parametrize("flags, says", [
    (["--device", "mps"], "--device mps: no mps device is available here"),
])  # fmt: skip
def test_unavailable_devices_are_one_sentence(flags, says, tiny_models, rows, tmp_path):
    import torch as torch_module

    if "mps" in flags and torch_module.backends.mps.is_available():
        flags, says = ["--device", "cuda"], "--device cuda: no cuda device is available here"
    with pytest.raises(BadInput, match=says):
        distill.main(distill_argv(tiny_models, rows, tmp_path / "run", tmp_path / "cache", *flags))
    assert not (tmp_path / "run").exists()


def test_evaluate_puts_its_table_in_the_card(tiny_models, rows, tmp_path):
    import evaluate

    distill.main(distill_argv(tiny_models, rows, tmp_path / "run", tmp_path / "cache", "--max-steps", "2"))
    card = (tmp_path / "run" / "README.md").read_text()
    assert "Not yet scored" in card
    eval_args = ["--model", str(tmp_path / "run"), "--benchmark", rows, "--out-dir", str(tmp_path / "eval"),
                 "--cache-dir", str(tmp_path / "eval-cache")]  # fmt: skip
    evaluate.main(eval_args)
    card = (tmp_path / "run" / "README.md").read_text()
    assert "Not yet scored" not in card and "| nDCG@10 | nDCG@20 |" in card and "96 queries, 96 documents" in card
    assert card.count("## Retrieval, scored by evaluate.py") == 1
    evaluate.main(eval_args)  # scored again: the table is replaced, not repeated
    assert (tmp_path / "run" / "README.md").read_text().count("## Retrieval, scored by evaluate.py") == 1
