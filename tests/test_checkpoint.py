"""checkpoint.py: arguments and their ranges, the crash-safe checkpoint
(write whole, swap in, recover), resuming to the same weights, and the stops that
keep non-finite numbers out of a checkpoint."""

import argparse
import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from conftest import distill_argv, interrupt_after_step, read_log, trained_steps, write_rows
from test_scripts import assert_same_weights

import checkpoint
import distill
from checkpoint import BadInput, Parser, Range, load_model
from losses import Distance


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    return write_rows(tmp_path_factory.mktemp("checkpoint") / "rows.jsonl", n=24)


def state_step(out_dir):
    """The step of the checkpoint in out_dir."""
    return torch.load(out_dir / checkpoint.STATE, weights_only=False)["step"]


# ---------------------------------------------------------------------------
# Arguments


@pytest.mark.parametrize(
    "kind, bounds, good, bad",
    [
        (int, {"low": 1}, ["1", "7", "1000000"], ["0", "-3", "1.5", "nan", "x"]),
        (float, {"low": 0, "high": 1}, ["0", "0.2", "1"], ["1.5", "-1", "nan", "inf", "-inf"]),
        (float, {"low": 0, "open_low": True}, ["1e-9", "20"], ["0", "-1e-9", "nan", "inf"]),
        (int, {}, ["-5", "0", "12"], ["2.0e400", "nan", "abc"]),
    ],
)
def test_range_accepts_its_range_and_refuses_the_rest(kind, bounds, good, bad):
    """Each flag's type names its valid range; nan and inf are never in one."""
    check = Range(kind, **bounds)
    for text in good:
        assert check(text) == kind(text)
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match=rf"expected .*, got '{text}'"):
            check(text)


def test_range_describes_itself():
    assert Range(int, 1).describe() == "an integer >= 1"
    assert Range(float, 0, 1).describe() == "a number in [0, 1]"
    assert Range(float, 0, open_low=True).describe() == "a number > 0"
    assert Range(float, 0, 1, open_high=True).describe() == "a number in [0, 1)"


def test_parser_errors_are_one_line_and_status_1(capsys):
    parser = Parser("test")
    parser.add_argument("--lam", type=Range(float, 0, 1), default=0.2)
    with pytest.raises(SystemExit) as stop:
        parser.parse_args(["--lam", "1.5"])
    assert stop.value.code == "error: argument --lam: expected a number in [0, 1], got '1.5'"
    # sys.exit(text) prints the text and exits with status 1
    assert capsys.readouterr().err == ""


def test_flags_override_a_preset_and_resume_reads_the_saved_arguments(tmp_path):
    def parser():
        made = Parser("test")
        made.add_argument("--preset", default="demo")
        made.add_argument("--lr", type=Range(float, 0, open_low=True), default=1.0)
        made.add_argument("--out-dir", default=str(tmp_path / "run"))
        made.add_argument("--resume", action="store_true")
        made.add_argument("--overwrite", action="store_true")
        return made

    presets = {"demo": {}, "paper": {"lr": 0.5}}
    assert checkpoint.parse_args(parser(), presets, "x.py", ["--preset", "paper"]).lr == 0.5
    assert checkpoint.parse_args(parser(), presets, "x.py", ["--preset", "paper", "--lr", "0.25"]).lr == 0.25
    (tmp_path / "run").mkdir()
    saved = {"preset": "demo", "lr": 0.125, "out_dir": str(tmp_path / "run"), "resume": False, "overwrite": False}
    (tmp_path / "run" / "args.json").write_text(json.dumps(saved))
    args = checkpoint.parse_args(parser(), presets, "x.py", ["--resume"])
    assert args.lr == 0.125 and args.resume and not args.overwrite
    assert checkpoint.parse_args(parser(), presets, "x.py", ["--resume", "--lr", "0.01"]).lr == 0.01

    (tmp_path / "run" / "args.json").write_text(json.dumps({**saved, "lr": "fast"}))  # edited by hand
    with pytest.raises(BadInput, match=r"--resume: .*run/args.json: --lr: expected a number > 0, got .fast."):
        checkpoint.parse_args(parser(), presets, "x.py", ["--resume"])


def test_the_schedule_warms_up_then_decays_to_zero():
    """--warmup 0.4 of 10 steps: the Hugging Face "linear" schedule, s / 4 for the first 4
    steps (0, 1/4, 1/2, 3/4), then (10 - s) / 6 down to 0 at step 10."""
    args = argparse.Namespace(lr=2.0, weight_decay=0.0, warmup=0.4, max_steps=10, epochs=1)
    optimizer, scheduler, max_steps = checkpoint.adamw_with_schedule([torch.zeros(1, requires_grad=True)], args, 99)
    seen = []
    for _ in range(max_steps + 1):
        seen.append(optimizer.param_groups[0]["lr"] / 2.0)
        optimizer.step()
        scheduler.step()
    assert max_steps == 10
    assert [round(value, 6) for value in seen] == [
        0,
        0.25,
        0.5,
        0.75,
        1,
        0.833333,
        0.666667,
        0.5,
        0.333333,
        0.166667,
        0,
    ]


# ---------------------------------------------------------------------------
# The checkpoint: written whole, swapped in, recovered


def test_a_crash_between_the_two_renames_is_recovered_by_resume(tiny_models, rows, tmp_path):
    """The swap renames run -> run.old, then run.tmp -> run. Killed in between, only
    run.old and a complete run.tmp exist: --resume finds the run there, finishes the
    swap and goes on. Killed while run.tmp was still being written (no
    training state yet), the previous checkpoint comes back."""
    argv = distill_argv(tiny_models, rows, tmp_path / "run", tmp_path / "cache", "--log-every", "100")
    distill.main([*argv, "--max-steps", "2"])
    run = tmp_path / "run"
    shutil.copytree(run, tmp_path / "run.tmp")
    checkpoint.write_marker(run, *checkpoint.marker_of(run), parked=True)  # the swap marks what it sets aside
    run.rename(tmp_path / "run.old")
    distill.main([*argv, "--resume"])
    assert state_step(run) == 6
    assert not (tmp_path / "run.old").exists() and not (tmp_path / "run.tmp").exists()

    checkpoint.write_marker(run, *checkpoint.marker_of(run), parked=True)
    run.rename(tmp_path / "run.old")
    (tmp_path / "run.tmp").mkdir()
    shutil.copy(tmp_path / "run.old" / checkpoint.MARKER, tmp_path / "run.tmp")  # the checkpoint writes it first
    checkpoint.recover(run)
    assert state_step(run) == 6
    assert not (tmp_path / "run.old").exists() and not (tmp_path / "run.tmp").exists()


def test_folders_that_are_not_runs_are_never_deleted(tiny_models, rows, tmp_path):
    """A folder is a run of ours only by its marker: --overwrite never replaces a folder of someone
    else's files, even one holding an args.json; crash recovery never touches a user's own
    `<out-dir>.old` or `.tmp`, nor a leftover whose marker names another run."""
    mine = tmp_path / "run"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    (mine / "args.json").write_text("{}")  # looks like a run, and is not one
    with pytest.raises(BadInput, match="not a run folder of this repository .* never replaced"):
        distill.main(distill_argv(tiny_models, rows, mine, tmp_path / "cache", "--overwrite"))
    assert (mine / "thesis.tex").read_text() == "years of work"

    (tmp_path / "other.old").mkdir()
    (tmp_path / "other.old" / "notes.txt").write_text("keep")
    with pytest.raises(BadInput, match=r"other.old', where this run's checkpoints are swapped, holds files"):
        checkpoint.claim_out_dir(tmp_path / "other", resume=False, overwrite=False)  # refused before it starts
    assert (tmp_path / "other.old" / "notes.txt").read_text() == "keep" and not (tmp_path / "other").exists()

    run = tmp_path / "ours"
    for folder, run_id in ((run, "a"), (tmp_path / "ours.old", "b"), (tmp_path / "ours.tmp", "a")):
        folder.mkdir()
        checkpoint.write_marker(folder, "distill.py", run_id)
    checkpoint.recover(run)
    assert (tmp_path / "ours.old").is_dir() and not (tmp_path / "ours.tmp").exists()  # another run's; this run's


def test_overwrite_never_replaces_what_the_command_reads_nor_another_scripts_run(tiny_models, rows, tmp_path):
    """A stage-1 run is not stage 2's to replace: joint_train.py --overwrite into it is refused,
    and so is an --out-dir that is, holds or sits inside a folder the command reads (--stage1,
    --cache-dir, a --data file's folder), each before anything is written; every file stays."""
    import joint_train

    distill.main(distill_argv(tiny_models, rows, tmp_path / "stage1", tmp_path / "cache"))
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    base = ["--stage1", str(tmp_path / "stage1"), "--data", rows, "--cache-dir", str(tmp_path / "cache"),
            "--dev-size", "4", "--per-device-batch-size", "8", "--mini-batch-size", "4",
            "--max-length", "32"]  # fmt: skip
    for out_dir, expected in [
        (tmp_path / "stage1", r"is, holds or sits inside --stage1"),
        (tmp_path, r"is, holds or sits inside --stage1"),
        (tmp_path / "cache" / "run", r"is, holds or sits inside --cache-dir"),
        (Path(rows).parent, r"is, holds or sits inside --data"),
    ]:
        with pytest.raises(BadInput, match=expected):
            joint_train.main([*base, "--out-dir", str(out_dir), "--overwrite"])
    other = tmp_path / "elsewhere"
    shutil.copytree(tmp_path / "stage1", other)
    with pytest.raises(BadInput, match=r"holds a run of distill.py; --overwrite replaces only a run of joint_train.py"):
        joint_train.main([*base, "--out-dir", str(other), "--overwrite"])
    assert {path: path.read_bytes() for path in before} == before
    assert (
        sorted(other.iterdir())
        and (other / "args.json").read_bytes() == (tmp_path / "stage1" / "args.json").read_bytes()
    )


def test_a_users_file_where_the_lock_goes_is_refused_not_truncated(tmp_path):
    """The lock file's name is namespaced and created exclusively; a file of that name that is not
    one of ours stays byte for byte, and the run is refused in one sentence before anything else."""
    user_file = tmp_path / ".run.mimo-lock"
    user_file.write_text("my notes")
    with pytest.raises(BadInput, match=r"where a run's lock file goes, is not one of ours"):
        checkpoint.claim_out_dir(tmp_path / "run", resume=False, overwrite=False)
    assert user_file.read_text() == "my notes" and not (tmp_path / "run").exists()
    checkpoint.claim_out_dir(tmp_path / "other", resume=False, overwrite=False)  # a lock of ours: created, then kept
    assert (tmp_path / ".other.mimo-lock").read_text().startswith(checkpoint.LOCK_SIGNATURE)


def test_full_disk_while_saving_keeps_the_previous_checkpoint(tiny_models, rows, tmp_path, monkeypatch):
    """The step-4 checkpoint fails as a full disk fails (OSError ENOSPC while writing):
    one sentence, the step-2 checkpoint intact, no half run.tmp, and --resume goes on."""
    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        if str(f).endswith("trainer_state.pt") and obj["step"] == 4:
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    argv = distill_argv(tiny_models, rows, tmp_path / "run", tmp_path / "cache", "--log-every", "100")
    monkeypatch.setattr(checkpoint.torch, "save", failing_save)
    with pytest.raises(
        SystemExit,
        match=r"could not write a checkpoint .* the checkpoint of step 2 in .* is intact: continue with .*--resume",
    ):
        distill.main(argv)
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    assert state_step(tmp_path / "run") == 2
    assert not (tmp_path / "run.tmp").exists()
    distill.main([*argv, "--resume"])  # and the run can go on
    assert state_step(tmp_path / "run") == 6


def test_kill_9_between_checkpoints_then_resume_matches_an_uninterrupted_run(tiny_models, rows, tmp_path):
    """A real `kill -9` of a running distill.py once it has logged step 7 (after the
    step-5 checkpoint): --resume goes on from the last checkpoint, logs every step
    once, and ends with the weights of an uninterrupted run."""

    def argv(out_dir, *extra):
        return ["distill.py", *distill_argv(tiny_models, rows, out_dir, tmp_path / f"cache-{out_dir.name}",
                "--max-steps", "30", "--save-every", "5", "--log-every", "1", *extra)]  # fmt: skip

    distill.main(argv(tmp_path / "a")[1:])
    status, _ = interrupt_after_step(argv(tmp_path / "b"), tmp_path / "b", 7, signal.SIGKILL)
    assert status == -signal.SIGKILL, "the run ended before it could be killed"
    assert 5 <= state_step(checkpoint.after_recovery(tmp_path / "b")) < 30

    distill.main(argv(tmp_path / "b", "--resume")[1:])
    assert_same_weights(tmp_path / "a", tmp_path / "b")
    assert trained_steps(tmp_path / "b") == list(range(1, 31))  # none trained twice, none skipped


# ---------------------------------------------------------------------------
# Non-finite numbers never reach a checkpoint


def test_nonfinite_loss_stops_before_it_is_saved(tiny_models, rows, tmp_path, monkeypatch):
    """From step 3 on the loss is NaN (and so are the weights after the update). The
    run stops at the step-4 save check, naming the step and a resume command with a
    lower learning rate; the step-2 checkpoint stays, with finite weights."""
    real = distill.DISTILL_LOSSES["cosine"].loss
    calls = {"n": 0}

    def poisoned(student, teacher):
        calls["n"] += 1
        loss = real(student, teacher)
        return loss * float("nan") if calls["n"] >= 3 else loss

    monkeypatch.setitem(distill.DISTILL_LOSSES, "cosine", Distance(poisoned, "1 - cos"))
    argv = distill_argv(tiny_models, rows, tmp_path / "run", tmp_path / "cache", "--log-every", "100")
    with pytest.raises(SystemExit, match=r"the loss is nan at step 4; .* --resume .* --lr 2\.5e-05"):
        distill.main(argv)
    assert state_step(tmp_path / "run") == 2
    saved = load_model(str(tmp_path / "run"))
    assert all(torch.isfinite(p).all() for p in saved.parameters())


def test_a_nonfinite_gradient_norm_stops_the_run_though_the_loss_is_finite(tiny_models, rows, tmp_path, monkeypatch):
    """From the third call on, clipping reports an infinite gradient norm while the loss
    stays finite: the check on the step-4 save names the gradient norm, and the step-2
    checkpoint stays."""
    real = torch.nn.utils.clip_grad_norm_
    calls = {"n": 0}

    def reports_inf(params, max_norm):
        calls["n"] += 1
        norm = real(params, max_norm)
        return norm * float("inf") if calls["n"] >= 3 else norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", reports_inf)
    argv = distill_argv(tiny_models, rows, tmp_path / "run", tmp_path / "cache", "--log-every", "100")
    with pytest.raises(SystemExit, match=r"the gradient norm is inf at step 4; .* --resume"):
        distill.main(argv)
    assert state_step(tmp_path / "run") == 2


def test_weights_gone_bad_between_checks_are_never_saved(tiny_models, rows, tmp_path, monkeypatch):
    """The fourth optimizer step writes NaN into the weights; the loss and gradient norm
    of step 4 were computed before it, so only the check inside save() can see it: the
    run stops there, and the step-2 checkpoint stays, finite."""
    real = torch.optim.AdamW.step
    calls = {"n": 0}

    def poisoning_step(self, *args, **kwargs):
        calls["n"] += 1
        result = real(self, *args, **kwargs)
        if calls["n"] == 4:
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("nan"))
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", poisoning_step)
    argv = distill_argv(tiny_models, rows, tmp_path / "run", tmp_path / "cache", "--log-every", "100")
    with pytest.raises(SystemExit, match=r"the weights are not finite at step 4"):
        distill.main(argv)
    assert state_step(tmp_path / "run") == 2
    assert all(torch.isfinite(p).all() for p in load_model(str(tmp_path / "run")).parameters())


def test_resume_with_a_lower_learning_rate_uses_it(tiny_models, rows, tmp_path):
    """The advice after a non-finite loss is `--resume --lr X`: the resumed steps must
    run at X's schedule, not at the saved optimizer's peak."""
    argv = distill_argv(tiny_models, rows, tmp_path / "run", tmp_path / "cache", "--log-every", "1", "--lr", "1e-3")
    distill.main(argv)
    full = {r["step"]: r["lr"] for r in read_log(tmp_path / "run") if "lr" in r}
    shutil.rmtree(tmp_path / "run")
    distill.main([*argv, "--max-steps", "2"])
    distill.main([*argv, "--resume", "--max-steps", "6", "--lr", "2.5e-4"])
    resumed = {r["step"]: r["lr"] for r in read_log(tmp_path / "run") if "lr" in r}
    for step in (3, 4, 5):
        assert resumed[step] == pytest.approx(full[step] / 4)


def test_a_run_saved_with_a_retired_flag_resumes_and_keeps_its_tensorboard_files(tiny_models, rows, tmp_path):
    """A run from when --report-to existed has "report_to" in args.json and maybe tensorboard/ event files: --resume
    reads the arguments without the retired key, and the next checkpoints carry the event files along."""
    argv = distill_argv(tiny_models, rows, tmp_path / "run", tmp_path / "cache", "--max-steps", "2")
    distill.main(argv)
    saved = json.loads((tmp_path / "run" / "args.json").read_text())
    (tmp_path / "run" / "args.json").write_text(json.dumps({**saved, "report_to": "tensorboard"}))
    (tmp_path / "run" / "tensorboard").mkdir()
    (tmp_path / "run" / "tensorboard" / "events.out").write_bytes(b"the user's events")
    distill.main([*argv, "--resume", "--max-steps", "4"])
    assert state_step(tmp_path / "run") == 4
    assert (tmp_path / "run" / "tensorboard" / "events.out").read_bytes() == b"the user's events"
    assert "report_to" not in json.loads((tmp_path / "run" / "args.json").read_text())


def test_an_out_dir_that_is_a_link_is_its_target(tiny_models, rows, tmp_path):
    """Checkpoints swap the folder the link points to, three times here; the link stays a link to it."""
    os.symlink(tmp_path / "real", tmp_path / "link")
    distill.main(distill_argv(tiny_models, rows, tmp_path / "link", tmp_path / "cache"))
    assert (tmp_path / "link").is_symlink() and state_step(tmp_path / "real") == 6
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith(("real", "link"))) == [
        "link",
        "real",
    ]


def test_only_dev_metrics_are_judged_in_the_log(tmp_path):
    """fp16's scaler skips a step whose gradient overflowed, and its log line says grad_norm inf: that is no reason
    to stop; a dev metric that is not finite is."""
    run = argparse.Namespace(main=True, out_dir=tmp_path, bar=None, saved_step=None, script="distill.py",
                             args=argparse.Namespace(lr=1e-4))  # fmt: skip
    run.stop = lambda message: checkpoint.Run.stop(run, message)
    run.stop_not_finite = lambda what, step: checkpoint.Run.stop_not_finite(run, what, step)
    run.where_to_go_on = lambda lr=None: checkpoint.Run.where_to_go_on(run, lr)
    checkpoint.Run.log(run, {"step": 3, "loss": 0.5, "grad_norm": float("inf")})
    assert json.loads((tmp_path / "log.jsonl").read_text())["step"] == 3
    with pytest.raises(SystemExit, match=r"dev_distance is nan at step 4"):
        checkpoint.Run.log(run, {"step": 4, "dev_distance": float("nan")})


def test_scores_evaluate_added_to_the_card_survive_the_next_checkpoint(tiny_models, rows, tmp_path):
    """evaluate.py puts its table into a run's README.md; the checkpoints a --resume writes carry it over."""
    argv = distill_argv(tiny_models, rows, tmp_path / "run", tmp_path / "cache")
    distill.main([*argv, "--max-steps", "2"])
    assert checkpoint.add_results_to_card(tmp_path / "run", ["| nDCG@10 |", "| 0.1234 |"], "Retrieval")
    distill.main([*argv, "--resume", "--max-steps", "4"])
    assert state_step(tmp_path / "run") == 4 and "| 0.1234 |" in (tmp_path / "run" / "README.md").read_text()
