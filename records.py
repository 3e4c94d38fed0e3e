"""
What a training run leaves for people to read, beside the model itself:

- log.jsonl, one JSON line per log step, and the same records sent to the trackers
  of --report-to (tensorboard, trackio, wandb);
- curves.png: loss and each term, learning rate and the dev metrics over steps,
  drawn from log.jsonl (also for any run directory after the fact:
  `python evaluate.py --curves runs/stage1 runs/stage2`);
- README.md, the model card: base model, teacher, languages, objective and its
  hyperparameters, data, dev numbers, and evaluate.py's table once it has scored
  the folder;
- the list of files that make up the model, which is what --push-to-hub uploads
  (not the training state, nor the log).
"""

import importlib.util
import json
import time
from pathlib import Path

from cli import BadInput, first_line

REPORT_TO = ("none", "tensorboard", "trackio", "wandb")
# What a run directory holds besides the model: kept out of an upload.
RUN_ONLY = ("args.json", "log.jsonl", "projection.safetensors", "training_state", "tensorboard")


# ---------------------------------------------------------------------------
# Log lines and trackers


def check_report_to(report_to):
    """Refuse, before anything is written, a tracker whose package is not installed."""
    package = {"tensorboard": "tensorboard", "trackio": "trackio", "wandb": "wandb"}.get(report_to)
    if package and importlib.util.find_spec(package) is None:
        raise BadInput(f"--report-to {report_to} needs the {package} package: pip install {package}")


class Reporter:
    """The trackers --report-to names, fed the records log.jsonl gets. Rank 0 only.

    tensorboard writes event files to <out_dir>/tensorboard; trackio and wandb (the
    same API: init, log, finish) keep their own folders and, for wandb, its account.
    """

    def __init__(self, report_to, out_dir, project, run_name, config):
        self.tensorboard, self.tracker = None, None
        self.out_dir = Path(out_dir)
        if report_to == "tensorboard":
            self.open_tensorboard()
        elif report_to in ("trackio", "wandb"):
            try:
                self.tracker = __import__(report_to)
            except ImportError:
                raise BadInput(
                    f"--report-to {report_to} needs the {report_to} package: pip install {report_to}"
                ) from None
            self.tracker.init(project=project, name=run_name, config=config)

    def open_tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise BadInput("--report-to tensorboard needs the tensorboard package: pip install tensorboard") from None
        self.tensorboard = SummaryWriter(str(self.out_dir / "tensorboard"))

    def report(self, record):
        """One log record: every number but the step, under train/ or dev/."""
        step = record["step"]
        values = {key: value for key, value in record.items() if key != "step" and isinstance(value, (int, float))}
        named = {
            (key if key.startswith("dev_") else f"train/{key}").replace("dev_", "dev/"): v for key, v in values.items()
        }
        if self.tensorboard is not None:
            for name, value in named.items():
                self.tensorboard.add_scalar(name, value, step)
        if self.tracker is not None:
            self.tracker.log(named, step=step)

    def pause(self):
        """Before the run directory is swapped for a new checkpoint: close the event file,
        so the copy the checkpoint takes is whole."""
        if self.tensorboard is not None:
            self.tensorboard.close()

    def resume(self):
        """After the swap: a new event file in the new directory (tensorboard reads them all)."""
        if self.tensorboard is not None:
            self.open_tensorboard()

    def finish(self):
        self.pause()
        if self.tracker is not None:
            self.tracker.finish()


def log_line(out_dir, record, reporter=None, write=print):
    """One greppable console line (`step 120 | loss 0.4121 | ...`), one JSON line in
    log.jsonl, and the same record to the trackers."""
    text = " | ".join(
        f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}" for key, value in record.items()
    )
    write(text)
    with open(Path(out_dir) / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    if reporter is not None:
        reporter.report(record)


def read_log(out_dir):
    """The records of a run's log.jsonl; a line cut short by a kill is skipped."""
    records = []
    path = Path(out_dir) / "log.jsonl"
    if not path.is_file():
        return records
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
    return records


# ---------------------------------------------------------------------------
# curves.png

CURVE_PANELS = (  # (title, keys it draws when the log has them)
    ("loss", ("loss", "xlco", "distill", "infonce", "lakda")),
    ("learning rate", ("lr",)),
    ("dev set", ("dev_distance", "dev_accuracy")),
)


def plot_curves(run_dirs, path, quiet=False, names=None):
    """curves.png: a row of panels per run directory (loss and its terms, learning rate,
    dev metrics) against the step. Returns the path, or None (with a note on stdout
    unless quiet) when matplotlib is missing or no log has anything to draw. names: the
    runs' titles, by default their folders' names."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        if not quiet:
            print("note: matplotlib is not installed, so no curves (pip install matplotlib)")
        return None
    names = names or [Path(run).name for run in run_dirs]
    runs = [(name, read_log(run)) for run, name in zip(run_dirs, names)]
    runs = [(name, log) for name, log in runs if log]
    if not runs:
        if not quiet:
            print(f"note: no log records in {', '.join(map(str, run_dirs))}, so no curves")
        return None
    figure, axes = plt.subplots(len(runs), len(CURVE_PANELS), figsize=(4.5 * len(CURVE_PANELS), 3.2 * len(runs)),
                                squeeze=False)  # fmt: skip
    for row, (run, log) in zip(axes, runs):
        for axis, (title, keys) in zip(row, CURVE_PANELS):
            for key in keys:
                points = [(record["step"], record[key]) for record in log if isinstance(record.get(key), (int, float))]
                if points:
                    axis.plot(*zip(*points), marker="o" if len(points) < 30 else None, markersize=3, label=key)
            axis.set(title=f"{run}: {title}", xlabel="step")
            if axis.lines:
                axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)


# ---------------------------------------------------------------------------
# The model card

CARD_RESULTS_START, CARD_RESULTS_END = "<!-- evaluate.py results -->", "<!-- end of evaluate.py results -->"


def write_card(folder, name, arguments, history, base_model, teacher, languages):
    """README.md of a run directory: front matter the Hugging Face hub reads, then what a
    reader needs to use and judge the model. A table evaluate.py added earlier is kept.

    name: the model's name (the run folder's); arguments: args.json's content (with
    "script"); history: the dev numbers so far;
    base_model: the backbone the student started from; teacher: the teacher's name or
    None; languages: the languages trained on, or None where the data decides them.
    """
    folder = Path(folder)
    script = arguments.get("script", "")
    stage = "stage 1 (distillation)" if script == "distill.py" else f"stage 2 ({arguments.get('objective', '')})"
    tags = ["sentence-transformers", "feature-extraction", "multilingual-retrieval", "mimo"]
    front = ["---", "library_name: sentence-transformers", "pipeline_tag: sentence-similarity", "tags:"]
    front += [f"- {tag}" for tag in tags]
    if base_model:
        front.append(f"base_model: {base_model}")
    if languages:
        front += ["language:", *(f"- {lang}" for lang in languages)]
    front.append("---")
    lines = [
        *front,
        "",
        f"# {name}",
        "",
        f"A multilingual embedding model for retrieval over mixed-language corpora, trained with MIMO, {stage}, "
        f"by `{script}` of the mimo repository.",
        "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "",
        f'model = SentenceTransformer("{name}")  # this folder, or the hub repository it was pushed to',
        'embeddings = model.encode(["Where is the nearest train station?", "¿Dónde está la estación de tren?"])',
        "```",
        "",
        "## Training",
        "",
        "| | |",
        "| --- | --- |",
        f"| base model | `{base_model}` |",
        f"| teacher | {f'`{teacher}` (frozen, English)' if teacher else 'none'} |",
        f"| objective | {objective_line(arguments)} |",
        f"| data | {', '.join(f'`{source}`' for source in as_list(arguments.get('data')))} |",
        f"| languages | {' '.join(languages) if languages else 'as in the data'} |",
        f"| batch | {arguments.get('per_device_batch_size')} per device and step"
        + (
            f", mini-batches of {arguments['mini_batch_size']} (gradient caching)"
            if "mini_batch_size" in arguments
            else ""
        )
        + " |",
        f"| steps | {history.get('steps', '?')} of {history.get('max_steps', '?')}, peak learning rate "
        f"{arguments.get('lr'):g}, warm-up {arguments.get('warmup'):g} of the steps, weight decay "
        f"{arguments.get('weight_decay'):g} |",
        f"| max length | {arguments.get('max_length')} tokens |",
        f"| precision | {history.get('precision', arguments.get('precision'))} |",
        "",
        "The projection W into the teacher's space (`projection.safetensors`) is used in training only; "
        "the model is the student alone. Every argument is in `args.json`, the training log in `log.jsonl`.",
        "",
        "## Dev set, before and after training",
        "",
        *dev_table(history, arguments.get("script")),
        "",
        *teacher_check_lines(history),
        "![training curves](curves.png)",
        "",
        CARD_RESULTS_START,
        *previous_results(folder / "README.md"),
        CARD_RESULTS_END,
        "",
    ]
    (folder / "README.md").write_text("\n".join(lines), encoding="utf-8")


def objective_line(arguments):
    """The objective and its hyperparameters, in the paper's notation."""
    script, objective = arguments.get("script"), arguments.get("objective")
    distance = "1 - cos" if arguments.get("distill_loss") == "cosine" else "MSE"
    if script == "distill.py":
        return f"L = mean d(W s(x_X), t(x_en)), d = {distance}"
    if objective == "mimo":
        lam = arguments.get("lam")
        symmetric = ", symmetric" if arguments.get("symmetric") else ""
        return (f"L = {lam:g} L_XLCO + {1 - lam:g} L_Distill (lambda = {lam:g}); InfoNCE scale "
                f"{arguments.get('scale'):g}{symmetric}; d = {distance}")  # fmt: skip
    if objective == "lakda":
        return f"LaKDA, a = {arguments.get('lakda_alpha'):g}, InfoNCE scale {arguments.get('scale'):g}"
    return f"{'cross-lingual' if objective == 'xlco' else 'same-language'} InfoNCE, scale {arguments.get('scale'):g}"


# What each script's dev numbers measure, as the card names them
DEV_METRICS = {
    ("distill.py", "distance"): "cosine distance to the teacher, through W (lower is better)",
    ("distill.py", "accuracy"): "translation retrieval top-1, X -> English, in the student's space",
    ("joint_train.py", "distance"): "distillation distance to the teacher (lower is better)",
    ("joint_train.py", "accuracy"): "cross-lingual in-batch accuracy, query in X -> passage in Y",
}


def dev_table(history, script):
    before, after = history.get("before") or {}, history.get("after") or {}
    keys = [key for key in before if isinstance(before[key], (int, float))]
    if not keys:
        return ["No dev evaluation yet."]
    rows = ["| metric | before | after |", "| --- | ---: | ---: |"]
    for key in keys:
        name, value = DEV_METRICS.get((script, key), key), after.get(key)
        rows.append(f"| {name} | {before[key]:.4f} | " + (f"{value:.4f} |" if value is not None else "|"))
    return rows


def teacher_check_lines(history):
    """The teacher check joint_train.py ran before training, if it ran: English query ->
    English passage retrieval over the dev rows, nDCG@10 of the teacher and the student."""
    check = history.get("teacher_check")
    if not check:
        return []
    verdict = (
        "clearly better than the teacher, so the distillation term pulled it toward a weaker space"
        if check["student_better"]
        else "not clearly better than the teacher"
    )
    return [
        "## Teacher check, before training",
        "",
        f"English query -> English passage among the {check['queries']} dev passages, nDCG@10: teacher "
        f"{check['teacher_ndcg_at_10']:.4f}, student {check['student_ndcg_at_10']:.4f} (margin "
        f"{check['margin']:.4f}); the student was {verdict}.",
        "",
    ]


def as_list(value):
    return value if isinstance(value, list) else [value] if value else []


def previous_results(card):
    """The lines between the results markers of an existing card, or the placeholder."""
    if card.is_file():
        text = card.read_text(encoding="utf-8")
        if CARD_RESULTS_START in text and CARD_RESULTS_END in text:
            inside = text.split(CARD_RESULTS_START, 1)[1].split(CARD_RESULTS_END, 1)[0]
            return inside.strip("\n").splitlines()
    return ["Not yet scored: `python evaluate.py --model <this folder>` adds its table here."]


def add_results_to_card(folder, table_lines, title):
    """Put evaluate.py's table for this model into the card between the markers; a card
    without markers (not one of ours) is left alone. Returns whether it was written."""
    card = Path(folder) / "README.md"
    if not card.is_file():
        return False
    text = card.read_text(encoding="utf-8")
    if CARD_RESULTS_START not in text or CARD_RESULTS_END not in text:
        return False
    head, rest = text.split(CARD_RESULTS_START, 1)
    tail = rest.split(CARD_RESULTS_END, 1)[1]
    block = ["", f"## {title}", "", f"Scored by evaluate.py on {time.strftime('%Y-%m-%d')}.", "", *table_lines, ""]
    card.write_text(head + CARD_RESULTS_START + "\n".join(block) + CARD_RESULTS_END + tail, encoding="utf-8")
    return True


# ---------------------------------------------------------------------------
# What a model is, and uploading it


def model_files(folder):
    """The files of a run directory that make up the published model: everything but the
    run's own records and training state (RUN_ONLY), relative paths, sorted."""
    folder = Path(folder)
    return sorted(
        str(path.relative_to(folder))
        for path in folder.rglob("*")
        if path.is_file() and path.relative_to(folder).parts[0] not in RUN_ONLY
    )


def push_to_hub(folder, repo_id, private):
    """Upload the model files and card of `folder` to the hub repository repo_id (created if
    needed); the training state, log and projection stay behind. Returns the repo's URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, allow_patterns=model_files(folder),
                          commit_message=f"Upload {Path(folder).name}, trained with mimo")  # fmt: skip
    except Exception as error:  # no network, no token, no rights: one sentence, the run itself is safe
        leave_out = " ".join(f'--exclude "{name}" --exclude "{name}/*"' for name in RUN_ONLY)
        raise BadInput(
            f"--push-to-hub {repo_id}: the upload failed ({first_line(error)}); the run in {folder} is complete: "
            f"upload it later with `hf upload {repo_id} {folder} . {leave_out}`"
        ) from None
    return str(url)
