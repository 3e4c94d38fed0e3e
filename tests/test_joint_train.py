"""joint_train.py: gradient caching equals the full batch, the pair sampler is
balanced, and every objective trains for a few steps on tiny models."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter

import pytest
import torch
from conftest import ROOT, interrupt_after_step, joint_argv, read_log, run_script, trained_steps, write_rows
from test_scripts import assert_same_weights

import checkpoint
import data
import distill
import joint_train
from checkpoint import BadInput, load_model
from losses import cosine_distill_loss, info_nce

TEXTS_Q = [
    "what is water",
    "why is the sky blue",
    "stone age tools",
    "a river in spain",
    "green paper",
    "light and glass",
    "metal bread",
]
TEXTS_P = [
    "water is a liquid",
    "light scatters in air",
    "early people used stone",
    "the ebro flows east",
    "paper can be green",
    "glass lets light through",
    "nobody bakes metal",
]


def loss_of(q, p, W, t_q, t_p):
    """The MIMO objective at lam 0.2, as joint_train.py combines it."""
    return 0.2 * info_nce(q, p, 20.0) + 0.8 * (cosine_distill_loss(W(q), t_q) + cosine_distill_loss(W(p), t_p)) / 2


@pytest.mark.parametrize("mini_batch_size", [1, 3, 7])
def test_gradient_cache_equals_full_batch(tiny_models, mini_batch_size):
    """Parameter gradients through the cache (pass 1 without graph, loss gradient
    w.r.t. the embeddings, pass 2 per mini-batch) equal plain back-propagation
    through the whole batch. float64 and no dropout, so they agree to ~1e-12;
    mini-batches of 3 leave a ragged last one."""
    torch.manual_seed(0)
    device = torch.device(os.environ.get("MIMO_TEST_DEVICE", "cpu"))  # bench/gpu_check.sh runs it on CUDA
    student = load_model(tiny_models["student"]).double().eval().to(device)
    W = torch.nn.Linear(student.get_embedding_dimension(), 32, bias=False).double().to(device)
    t_q, t_p = (torch.randn(7, 32, dtype=torch.float64, device=device) for _ in range(2))
    no_autocast = lambda: torch.autocast("cpu", enabled=False)  # noqa: E731

    loss_of(joint_train.embed(student, TEXTS_Q), joint_train.embed(student, TEXTS_P), W, t_q, t_p).backward()
    plain = {name: param.grad.clone() for name, param in student.named_parameters() if param.grad is not None}
    plain["W"] = W.weight.grad.clone()
    student.zero_grad()
    W.zero_grad()

    q, q_states = joint_train.embed_without_graph(student, TEXTS_Q, mini_batch_size, no_autocast)
    p, p_states = joint_train.embed_without_graph(student, TEXTS_P, mini_batch_size, no_autocast)
    q, p = q.requires_grad_(True), p.requires_grad_(True)
    loss_of(q, p, W, t_q, t_p).backward()
    joint_train.backward_through_cache(student, TEXTS_Q, q.grad, q_states, mini_batch_size, no_autocast)
    joint_train.backward_through_cache(student, TEXTS_P, p.grad, p_states, mini_batch_size, no_autocast)
    cached = {name: param.grad for name, param in student.named_parameters() if param.grad is not None}
    cached["W"] = W.weight.grad

    assert plain.keys() == cached.keys() and len(plain) > 10
    for name in plain:
        torch.testing.assert_close(cached[name], plain[name], rtol=1e-7, atol=1e-10, msg=name)


def test_gradient_cache_replays_dropout(tiny_models, monkeypatch):
    """In training mode (dropout on), pass 2 re-encodes under pass 1's RNG states, so
    it sees the same dropout masks and reproduces pass 1's embeddings exactly (on CUDA
    too, where bench/gpu_check.sh runs it: the CUDA generator is replayed as well)."""
    device = torch.device(os.environ.get("MIMO_TEST_DEVICE", "cpu"))
    student = load_model(tiny_models["student"]).train().to(device)
    autocast = lambda: torch.autocast(device.type, enabled=False)  # noqa: E731
    first, states = joint_train.embed_without_graph(student, TEXTS_Q, 3, autocast)

    seen, embed = [], joint_train.embed

    def recording_embed(model, texts):
        out = embed(model, texts)
        seen.append(out.detach().float())
        return out

    monkeypatch.setattr(joint_train, "embed", recording_embed)
    joint_train.backward_through_cache(student, TEXTS_Q, torch.ones_like(first), states, 3, autocast)
    torch.testing.assert_close(torch.cat(seen), first, rtol=0, atol=0)

    with torch.no_grad():
        student.eval()
        without_dropout = embed(student, TEXTS_Q)
    assert not torch.allclose(first, without_dropout)  # dropout really was on: the check above is not vacuous


def test_language_pairs_cycle_every_ordered_pair_evenly():
    """4 languages give P = 12 ordered pairs X != Y; over n = 100 examples each occurs
    floor(100/12) = 8 or ceil = 9 times."""
    languages = ["en", "de", "ru", "zh"]
    pairs = data.language_pairs(100, languages, seed=0, epoch=0)
    counts = Counter(pairs)
    assert len(counts) == 12 and all(x != y for x, y in counts)
    assert set(counts.values()) <= {8, 9} and sum(counts.values()) == 100
    assert pairs == data.language_pairs(100, languages, seed=0, epoch=0)  # seeded
    assert pairs != data.language_pairs(100, languages, seed=0, epoch=1)  # another order next epoch


def test_lakda_passage_languages_are_balanced_and_independent_of_the_query_pairs():
    """Every language equally often (floor or ceil of n/L), and unrelated to the query
    pair of the same example: each (passage language Y of the pair, LaKDA's passage
    language Z) cell holds about n / (L L), which a language tied to the pair's cycle
    (Z = Y, or Z a function of the position) would not."""
    languages = ["en", "de", "ru", "zh"]
    n = 9600
    pairs = data.language_pairs(n, languages, seed=3, epoch=0)
    langs = data.passage_languages(n, languages, seed=3, epoch=0)
    assert set(Counter(langs).values()) == {n // 4}
    cells = Counter((y, z) for (_, y), z in zip(pairs, langs))
    assert len(cells) == 16 and all(abs(count - n / 16) < 5 * (n / 16) ** 0.5 for count in cells.values()), cells
    same = sum(z == y for (_, y), z in zip(pairs, langs))
    assert abs(same - n / 4) < 5 * (n * 3 / 16) ** 0.5  # as often as chance, not always (the old rule)
    assert langs == data.passage_languages(n, languages, seed=3, epoch=0)  # seeded
    assert langs != data.passage_languages(n, languages, seed=3, epoch=1)


def test_lakda_batches_take_their_passages_in_the_drawn_language():
    rows = [{"query": {"en": "q en", "de": "q de"}, "passage": {"en": "p en", "de": "p de"}}] * 2
    views = joint_train.make_batch(rows, [("en", "de"), ("de", "en")], "lakda", ["en", "en"])
    assert views == {"q": ["q en", "q de"], "p": ["p en", "p en"], "q_b": ["q de", "q en"]}


def test_weight_decay_spares_biases_and_normalisation_weights(tiny_models):
    """As the Hugging Face Trainer does: only matrices are decayed; every 1-d parameter
    (biases, LayerNorm weights) is in a group with decay 0."""
    import argparse

    from checkpoint import adamw_with_schedule

    student = load_model(tiny_models["student"])
    W = torch.nn.Linear(student.get_embedding_dimension(), 32, bias=False)
    params = [*student.parameters(), W.weight]
    args = argparse.Namespace(lr=1e-3, weight_decay=0.01, warmup=0.0, max_steps=5, epochs=1)
    optimizer, _, _ = adamw_with_schedule(params, args, 5)
    decayed, spared = optimizer.param_groups
    assert decayed["weight_decay"] == 0.01 and spared["weight_decay"] == 0.0
    assert any(param is W.weight for param in decayed["params"])
    names = {id(param): name for name, param in student.named_parameters()}
    assert {names[id(p)] for p in spared["params"]} == {n for n, p in student.named_parameters() if p.ndim == 1}
    assert any("LayerNorm.weight" in names[id(p)] for p in spared["params"])
    assert sum(map(len, (decayed["params"], spared["params"]))) == len(params)
    assert joint_train.PRESETS["paper"]["weight_decay"] == distill.PRESETS["paper"]["weight_decay"] == 0.0


def test_same_language_pairs_for_the_infonce_baseline():
    pairs = data.language_pairs(400, ["en", "de", "ru", "zh"], seed=1, epoch=0, same_language=True)
    assert all(x == y for x, y in pairs)
    assert all(70 < count < 130 for count in Counter(x for x, _ in pairs).values())  # uniform: 100 expected each


# ---------------------------------------------------------------------------
# The teacher check


def test_gold_ndcg_by_hand():
    """Query i's gold passage is passage i. Query 0 ranks it first: 1. Query 1 ranks it second
    (passage 0 scores higher): 1 / log2(3). Query 2 ties it with passage 0: the tie goes against
    the gold, rank 2, 1 / log2(3). With k = 1 only query 0 keeps its gain."""
    p = torch.eye(3)
    q = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0, 0.0], [2.0, 1.0, 0.0], [1.0, 0.0, 1.0]]), dim=-1)
    expected = [1.0, 1 / math.log2(3), 1 / math.log2(3)]
    assert joint_train.gold_ndcg_at_k(q, p).tolist() == pytest.approx(expected)
    assert joint_train.gold_ndcg_at_k(q, p, k=1).tolist() == [1.0, 0.0, 0.0]


def test_one_vector_for_every_text_scores_its_worst():
    """An embedder that maps every text to one vector ties all N = 12 passages: each gold is
    ranked last, past k = 10, so nDCG@10 = 0."""
    q = torch.nn.functional.normalize(torch.ones(12, 8), dim=-1)
    assert joint_train.gold_ndcg_at_k(q, q.clone()).tolist() == [0.0] * 12


def test_teacher_check_verdicts():
    """Perfect retrieval (query = its passage, the rest far) against one vector for every
    text (every gold last of N = 12: 0): the student is clearly better only when it is the
    perfect one. The per-query difference is 1 everywhere, so its standard error is 0 and
    the margin is the floor, 0.02. Equal models: difference 0, never better."""
    perfect = torch.eye(12, 16)
    collapsed = torch.nn.functional.normalize(torch.ones(12, 16), dim=-1)
    check = joint_train.teacher_check(collapsed, collapsed, perfect, perfect)
    assert check["teacher_ndcg_at_10"] == 0.0 and check["student_ndcg_at_10"] == 1.0
    assert check["margin"] == joint_train.CHECK_MIN_MARGIN and check["student_better"] and check["queries"] == 12
    check = joint_train.teacher_check(perfect, perfect, collapsed, collapsed)
    assert check["difference"] == -1.0 and not check["student_better"]
    assert not joint_train.teacher_check(perfect, perfect, perfect, perfect)["student_better"]


def test_teacher_check_margin_grows_with_the_noise():
    """Of 4 queries the teacher ranks 2 perfectly and ties the other 2 with each other's
    passage (each gold second: 1 / log2(3)); the student ranks all 4 perfectly. Differences
    0, 0, c, c with c = 1 - 1 / log2(3): mean c / 2, sample std c / sqrt(3), SE = std / 2, so
    the margin 2 SE = c / sqrt(3) exceeds the mean: not clearly better on 4 noisy queries.
    One query has no standard error: the margin is infinite."""
    perfect = torch.eye(4, 8)
    half = perfect.clone()
    half[2:] = torch.nn.functional.normalize(torch.ones(2, 8), dim=-1)  # queries and passages 2, 3: one vector
    check = joint_train.teacher_check(half, half, perfect, perfect)
    c = 1 - 1 / math.log2(3)
    assert check["teacher_ndcg_at_10"] == pytest.approx((2 + 2 / math.log2(3)) / 4)
    assert check["difference"] == pytest.approx(c / 2) and check["margin"] == pytest.approx(c / math.sqrt(3))
    assert not check["student_better"]
    assert joint_train.teacher_check(perfect[:1], perfect[:1], perfect[:1], perfect[:1])["margin"] == math.inf


# ---------------------------------------------------------------------------
# The script, end to end


@pytest.fixture(scope="module")
def stage1(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("stage2")
    rows = write_rows(root / "rows.jsonl", n=24)
    distill.main(
        [
            "--teacher",
            tiny_models["teacher"],
            "--student",
            tiny_models["student"],
            "--data",
            rows,
            "--out-dir",
            str(root / "stage1"),
            "--cache-dir",
            str(root / "cache"),
            "--dev-size",
            "4",
            "--per-device-batch-size",
            "16",
            "--max-length",
            "32",
            "--max-steps",
            "2",
        ]
    )
    return {"rows": rows, "stage1": str(root / "stage1"), "cache": str(root / "cache")}


@pytest.mark.parametrize("objective", ["mimo", "xlco", "infonce", "lakda"])
def test_each_objective_trains_and_writes_the_same_layout(objective, tiny_models, stage1, tmp_path):
    from sentence_transformers import SentenceTransformer

    history = joint_train.main(
        joint_argv(tiny_models, stage1, tmp_path / "run", "--objective", objective, "--lam", "0.35")
    )
    out = tmp_path / "run"
    assert SentenceTransformer(str(out), device="cpu").encode(["a query"]).shape == (1, 24)
    assert (out / "projection.safetensors").exists() == (objective == "mimo")  # only MIMO has W
    log = read_log(out)
    terms = {"mimo": {"xlco", "distill"}, "xlco": {"xlco"}, "infonce": {"infonce"}, "lakda": {"lakda"}}[objective]
    assert all(terms <= set(record) for record in log if "loss" in record)
    card = (out / "README.md").read_text()
    if objective == "mimo":
        assert "L = 0.35 L_XLCO + 0.65 L_Distill (lambda = 0.35)" in card
        assert f"| teacher | `{tiny_models['teacher']}` (frozen, English) |" in card
        record = [r for r in log if "loss" in r][-1]
        assert record["loss"] == pytest.approx(
            0.35 * record["xlco"] + 0.65 * record["distill"], rel=1e-5
        )  # --lam, not a constant
        assert "distance" in history["after"]


def test_a_new_objective_is_one_function_and_one_table_entry(tiny_models, stage1, tmp_path, monkeypatch):
    """The method changes in one place: an objective registered in losses.OBJECTIVES (here
    a toy one, 1 - cos between each query and its passage, plus a term that uses the
    teacher) trains with joint_train.py as it stands, and its term reaches the log and its
    line the model card, with no other file taught about it."""
    import losses

    def toy(e, t, W, h):
        pull = (1 - torch.nn.functional.cosine_similarity(e["q"], e["p"])).mean()
        anchor = h.distance(W(e["p"]), t["p_en"])  # the stage-1 distance, to the teacher's English passage
        return pull + anchor, {"pull": pull, "anchor": anchor}

    entry = losses.Objective(toy, {"q": ("query", "x"), "p": ("passage", "y")}, teacher=True, same_language=False,
                             label="Toy", card=lambda a: f"L = mean(1 - cos(q, p)) + d, lr {a['lr']:g}")  # fmt: skip
    monkeypatch.setitem(losses.OBJECTIVES, "toy", entry)
    joint_train.main(joint_argv(tiny_models, stage1, tmp_path / "run", "--objective", "toy", "--max-steps", "2"))
    trained = [record for record in read_log(tmp_path / "run") if "loss" in record]
    assert trained and all(record["loss"] == pytest.approx(record["pull"] + record["anchor"]) for record in trained)
    assert "| objective | L = mean(1 - cos(q, p)) + d, lr 2e-05 |" in (tmp_path / "run" / "README.md").read_text()
    assert (tmp_path / "run" / "projection.safetensors").is_file()  # it asked for the teacher, so W trained on


def test_fused_kernel_gets_the_autocast_dtype(tiny_models, stage1, tmp_path):
    """With --loss-impl triton under bf16 autocast, the kernel receives bf16 operands (its
    tensor-core path), and MIMO trains through it with finite loss terms. On CPU through
    Triton's interpreter, in a subprocess: TRITON_INTERPRET=1 must precede the import."""
    driver = (
        "import sys, fused, joint_train\n"
        "seen = set()\n"
        "real = fused.FusedInfoNCE.apply\n"
        "def apply(q, p, *rest):\n"
        "    seen.add((str(q.dtype), str(p.dtype)))\n"
        "    return real(q, p, *rest)\n"
        "fused.FusedInfoNCE.apply = apply\n"
        "joint_train.main(sys.argv[1:])\n"
        "print('kernel inputs', sorted(seen))\n"
    )
    args = joint_argv(
        tiny_models, stage1, tmp_path / "run", "--loss-impl", "triton", "--precision", "bf16", "--max-steps", "2"
    )
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", driver, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "InfoNCE info_nce_triton" in result.stdout
    assert "kernel inputs [('torch.bfloat16', 'torch.bfloat16')]" in result.stdout
    log = read_log(tmp_path / "run")
    trained = [record for record in log if "loss" in record]
    assert [record["step"] for record in trained] == [2]
    assert all(0 < trained[0][term] < 10 for term in ("xlco", "distill"))


def test_mimo_resume_after_the_step_2_checkpoint_matches_an_uninterrupted_run(
    tiny_models, stage1, tmp_path, monkeypatch
):
    """Run A goes straight through 4 steps. Run B stops right after writing its step-2
    checkpoint and is resumed: it ends with A's weights (and W), every step logged once."""
    joint_train.main(joint_argv(tiny_models, stage1, tmp_path / "a"))
    real_save = joint_train.Run.save

    def save_then_stop_at_2(run, step, *args, **kwargs):
        real_save(run, step, *args, **kwargs)
        if step == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(joint_train.Run, "save", save_then_stop_at_2)
    with pytest.raises(KeyboardInterrupt):
        joint_train.main(joint_argv(tiny_models, stage1, tmp_path / "b"))
    monkeypatch.setattr(joint_train.Run, "save", real_save)
    joint_train.main(joint_argv(tiny_models, stage1, tmp_path / "b", "--resume"))
    assert_same_weights(tmp_path / "a", tmp_path / "b")
    assert trained_steps(tmp_path / "b") == [2, 4]


def test_missing_stage1_says_how_to_make_it(tiny_models, stage1, tmp_path):
    args = joint_argv(tiny_models, stage1, tmp_path / "run")
    args[args.index("--stage1") + 1] = str(tmp_path / "nowhere")
    with pytest.raises(BadInput, match=r"run `python distill.py` first, or use --objective xlco"):
        joint_train.main(args)
    assert not (tmp_path / "run").exists()


def test_a_stage_2_run_given_as_stage_1_is_one_sentence(tiny_models, stage1, tmp_path):
    """A MIMO stage-2 run has a student and a W, but its args.json names no teacher: given as
    --stage1 it is refused by name, not a TypeError."""
    joint_train.main(joint_argv(tiny_models, stage1, tmp_path / "mimo", "--max-steps", "1", "--no-teacher-check"))
    with pytest.raises(BadInput, match=r"holds a run of joint_train.py, not a stage-1 run of distill.py"):
        joint_train.main(joint_argv(tiny_models, {**stage1, "stage1": str(tmp_path / "mimo")}, tmp_path / "run"))


def test_a_stage_1_with_a_damaged_args_json_is_one_sentence(tiny_models, stage1, tmp_path):
    """Its args.json cut short (a full disk, a bad copy): refused by name, not a JSONDecodeError."""
    shutil.copytree(stage1["stage1"], tmp_path / "stage1")
    (tmp_path / "stage1" / "args.json").write_text('{"script": "distill.py", "teach')
    with pytest.raises(BadInput, match=r"holds a run of another script, not a stage-1 run of distill.py"):
        joint_train.main(joint_argv(tiny_models, {**stage1, "stage1": str(tmp_path / "stage1")}, tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_mini_batch_larger_than_batch(tiny_models, stage1, tmp_path):
    with pytest.raises(BadInput, match="--mini-batch-size 16 is larger than --per-device-batch-size 8"):
        joint_train.main(joint_argv(tiny_models, stage1, tmp_path / "run", "--mini-batch-size", "16"))


def test_rows_with_one_language(tiny_models, stage1, tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"id": "a", "query_en": "what is it", "passage_en": "it is a thing"}) + "\n")
    args = joint_argv(tiny_models, stage1, tmp_path / "run")
    args[args.index("--data") + 1] = str(path)
    with pytest.raises(BadInput, match="at least 2 languages"):
        joint_train.main(args)


def test_lakda_refuses_symmetric(tiny_models, stage1, tmp_path):
    with pytest.raises(BadInput, match="LaKDA .* has no passage-to-query term"):
        joint_train.main(joint_argv(tiny_models, stage1, tmp_path / "run", "--objective", "lakda", "--symmetric"))
    assert not (tmp_path / "run").exists()


def test_ctrl_c_says_where_resume_goes_on_and_resume_matches(tiny_models, stage1, tmp_path):
    """A real Ctrl-C (SIGINT) of a running joint_train.py once it has logged step 7: no
    traceback, one line naming the checkpoint --resume continues from and the command,
    status 130; the resumed run ends with the weights of an uninterrupted one."""
    argv = ["--max-steps", "30", "--save-every", "5", "--log-every", "1"]
    joint_train.main(joint_argv(tiny_models, stage1, tmp_path / "a", *argv))
    status, stderr = interrupt_after_step(
        ["joint_train.py", *joint_argv(tiny_models, stage1, tmp_path / "b", *argv)], tmp_path / "b", 7, signal.SIGINT
    )
    assert status == 130 and "Traceback" not in stderr, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    saved = torch.load(tmp_path / "b" / checkpoint.STATE, weights_only=False)["step"]
    assert last == (
        f"interrupted; the checkpoint of step {saved} in {tmp_path / 'b'} is intact: continue with "
        f"`python joint_train.py --resume --out-dir {tmp_path / 'b'}`"
    )
    joint_train.main(joint_argv(tiny_models, stage1, tmp_path / "b", *argv, "--resume"))
    assert_same_weights(tmp_path / "a", tmp_path / "b")
    assert trained_steps(tmp_path / "b") == list(range(1, 31))


# ---------------------------------------------------------------------------
# The teacher check and the lambda sweep (a shell loop over --lam)


def write_echo_rows(path, n=24):
    """conftest's rows with each English query equal to its passage: any embedder that gives
    one text one vector retrieves every English passage first (nDCG@10 = 1)."""
    rows = [json.loads(line) for line in open(write_rows(path, n=n), encoding="utf-8")]
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps({**row, "query_en": row["passage_en"]}) + "\n")
    return str(path)


def test_teacher_check_advises_only_where_the_student_is_better(tiny_models, stage1, tmp_path, capsys):
    """On 16 dev rows whose English query is its passage, the student retrieves each first: 1.
    A teacher query prompt of 40 characters fills the teacher's 32 tokens, so its queries are
    one vector and each gold passage lands where that vector ranks it: a permutation of the
    ranks 1..16, mean nDCG@10 about 0.28. The student is clearly better, and the line says
    what to try; the log and the card have both numbers. --no-teacher-check skips it all."""
    rows = write_echo_rows(tmp_path / "rows.jsonl")
    # the last --data wins over joint_argv's
    argv = joint_argv(tiny_models, stage1, tmp_path / "run", "--dev-size", "16", "--max-steps", "1",
                      "--teacher-query-prompt", "x" * 40, "--data", rows)  # fmt: skip
    joint_train.main(argv)
    printed = capsys.readouterr().out
    assert "teacher check (English query -> English passage among the 16 dev passages, nDCG@10): teacher " in printed
    assert "try a stronger teacher (stage 1 again with distill.py --teacher) or a larger --lam." in printed
    check = next(record for record in read_log(tmp_path / "run") if "dev_en_teacher_ndcg_at_10" in record)
    assert check["dev_en_student_ndcg_at_10"] == 1.0 and check["dev_en_teacher_ndcg_at_10"] < 0.5
    assert check["step"] == 0 and check["dev_en_student_better"] is True
    assert "## Teacher check, before training" in (tmp_path / "run" / "README.md").read_text()

    joint_train.main([*argv, "--overwrite", "--no-teacher-check"])
    assert "teacher check" not in capsys.readouterr().out
    assert not any("dev_en_teacher_ndcg_at_10" in record for record in read_log(tmp_path / "run"))
    assert "Teacher check" not in (tmp_path / "run" / "README.md").read_text()


def test_lambda_sweep_runs_in_lambda_order_on_the_alignment_uniformity_plot(tiny_models, stage1, tmp_path, capsys):
    """A sweep as the README's shell loop writes it: one run per --lam into its own folder, each
    args.json holding its own lambda, each log its own mix of the terms; the teacher check (teacher
    and student both 1 on rows whose query is the passage) gives no advice. evaluate.py over the
    sweep and stage 1 draws au.png with the runs in lambda order, whatever order they are given."""
    import evaluate

    rows = write_echo_rows(tmp_path / "rows.jsonl")
    sweep = {lam: str(tmp_path / f"run-lam{lam}") for lam in ("1", "0", "0.5")}  # out of order
    for lam, folder in sweep.items():
        joint_train.main([*joint_argv(tiny_models, stage1, folder, "--max-steps", "2", "--data", rows), "--lam", lam])
        assert "teacher 1.000, student 1.000" in capsys.readouterr().out
        saved = json.loads((tmp_path / folder / "args.json").read_text())
        assert saved["lam"] == float(lam) and saved["script"] == "joint_train.py"
        record = [r for r in read_log(folder) if "loss" in r][-1]
        assert record["loss"] == pytest.approx(float(lam) * record["xlco"] + (1 - float(lam)) * record["distill"],
                                               rel=1e-5)  # fmt: skip

    report = evaluate.main(["--model", stage1["stage1"], *sweep.values(), "--benchmark", rows, "--no-cache",
                            "--out-dir", str(tmp_path / "eval")])  # fmt: skip
    assert (tmp_path / "eval" / "au.png").stat().st_size > 1000
    points, trajectory = evaluate.au_points(report[rows]["models"])
    assert trajectory == [sweep["0"], sweep["0.5"], sweep["1"]]
    labels = {name: label for name, label, _, _ in points}
    assert labels[sweep["0.5"]].startswith("λ = 0.5, nDCG@10 ") and labels[stage1["stage1"]].startswith(
        "stage 1, nDCG@10"
    )


def test_lambda_out_of_range_is_one_line_and_status_1(tmp_path):
    result = run_script("joint_train.py", "--lam", "-1", "--out-dir", str(tmp_path / "run"))
    assert result.returncode == 1
    assert result.stderr.strip() == "error: argument --lam: expected a number in [0, 1], got '-1'"
    assert not list(tmp_path.iterdir())
