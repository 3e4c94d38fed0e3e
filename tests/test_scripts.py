"""distill.py end to end, for a few steps on CPU, on tiny models built by the tests;
the refusals every script shares (one `error:` line, status 1, nothing written)."""

from pathlib import Path

import pytest
import torch
from conftest import distill_argv, read_log, run_script, trained_steps, write_rows
from safetensors.torch import load_file

import distill
from data import BadInput


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    return write_rows(tmp_path_factory.mktemp("data") / "rows.jsonl", n=24)


def weights(out_dir):
    """The student's tensors and W of a run directory, by name."""
    state = load_file(Path(out_dir) / "model.safetensors")
    state["W"] = torch.load(Path(out_dir) / "projection.pt")["weight"]
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
    expected = {"model.safetensors", "modules.json", "projection.pt", "args.json", "log.jsonl", "trainer_state.pt"}
    assert expected <= {p.name for p in out.iterdir()}
    assert torch.load(out / "projection.pt")["weight"].shape == (32, 24)  # (teacher dim, student dim)
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
    projection = torch.load(tmp_path / "run" / "projection.pt")
    torch.testing.assert_close(projection["weight"], torch.eye(32))  # fixed identity, untouched


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
    (out / "args.json").write_text("{}")  # a run of ours
    (out / "precious.txt").write_text("mine")
    with pytest.raises(BadInput, match="already holds a run; pass --resume"):
        distill.main(distill_argv(tiny_models, rows, out, tmp_path / "cache"))
    assert sorted(p.name for p in out.iterdir()) == ["args.json", "precious.txt"]
    assert (out / "args.json").read_text() == "{}"


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
