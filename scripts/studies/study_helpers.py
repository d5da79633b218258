"""Small helpers shared by ``scripts/studies/compare_stats.py`` and ``scripts/studies/score_study.py``.

Everything above the "outputs" section is pure (numpy in, numbers or strings out) and tested in
``tests/test_study_helpers.py``: rank correlation, set overlap, mean ± std cells, Markdown tables, the
AdaLoRA schedule scaled to a run's length and the steps on which the allocator re-allocates.
The "outputs" section writes files (Markdown, JSON, heatmap panels).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

# ---- statistics ----------------------------------------------------------------------------------


def jaccard(a, b) -> float:
    """``|A ∩ B| / |A ∪ B|`` of two boolean masks of one shape (1.0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.shape != b.shape:
        raise ValueError(f"jaccard: shapes differ, {a.shape} vs {b.shape}")
    union = int(np.sum(a | b))
    return 1.0 if union == 0 else int(np.sum(a & b)) / union


def chance_jaccard(kept: int, total: int) -> float:
    """Expected Jaccard overlap of two independent uniformly random ``kept``-of-``total`` subsets.

    ``E|A ∩ B| = kept² / total``; the union is ``2 kept - |A ∩ B|`` (the ratio of expectations, which is
    what a reader compares a measured overlap with; exact for ``kept`` in {0, total}).
    """
    if not 0 <= kept <= total or total < 1:
        raise ValueError(f"chance_jaccard: need 0 <= kept <= total, total >= 1; got {kept}, {total}")
    if kept == 0:
        return 1.0
    both = kept * kept / total
    return both / (2 * kept - both)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; 0.0 for a single value)."""
    x = np.asarray(values, np.float64)
    if x.size == 0:
        raise ValueError("mean_std: no values")
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else 0.0


def format_mean_std(values: Sequence[float], *, scale: float = 1.0, digits: int = 2) -> str:
    """``"mean ± std"`` of ``values * scale`` (e.g. ``scale=100`` for percentages)."""
    mean, std = mean_std([v * scale for v in values])
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (sample std / √n; nan for a single value)."""
    mean, std = mean_std(values)
    return mean, std / math.sqrt(len(values)) if len(values) > 1 else float("nan")


def format_paired(differences: Sequence[float], *, scale: float = 1.0, digits: int = 2) -> str:
    """``"+mean ± SE (k of n)"`` of per-seed differences ``differences * scale``; k counts those above 0."""
    mean, se = mean_se([d * scale for d in differences])
    spread = f" ± {se:.{digits}f}" if len(differences) > 1 else ""
    ahead = sum(d > 0 for d in differences)
    return f"{mean:+.{digits}f}{spread} ({ahead} of {len(differences)})"


def mean_ranks(rank_dicts: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Element-wise mean of ``{path: rank}`` dicts over runs (the paths must agree)."""
    if not rank_dicts:
        raise ValueError("mean_ranks: no runs")
    paths = list(rank_dicts[0])
    for ranks in rank_dicts[1:]:
        if set(ranks) != set(paths):
            raise ValueError("mean_ranks: runs adapt different matrices")
    return {p: float(np.mean([r[p] for r in rank_dicts])) for p in paths}


# ---- schedule ------------------------------------------------------------------------------------


def add_scale_arguments(parser) -> None:
    """The flags both studies share: the reduced scale of their runs and the compilation cache."""
    parser.add_argument("--max-train-examples", type=int, default=1024, help="0: the whole train split")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-seq-length", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=None,
        help="peak AdamW learning rate (default: the built-in run's); short runs need a larger one",
    )
    parser.add_argument("--init-fraction", type=float, default=0.1, help="t_init as a fraction of total steps")
    parser.add_argument("--final-fraction", type=float, default=0.2, help="t_final as a fraction of total steps")
    parser.add_argument("--delta-t", type=int, default=2)
    parser.add_argument("--cache-dir", default="/tmp/jax_cache", help="JAX persistent compilation cache")


def add_adapter_arguments(parser) -> None:
    """``--alpha`` and ``--orth-reg-weight`` for the score and statistics studies (default: the built-in run's),
    so that a study made at other values (e.g. before the defaults changed) can be reproduced."""
    parser.add_argument("--alpha", type=float, default=None, help="adapter scale numerator (default: built-in run's)")
    parser.add_argument(
        "--orth-reg-weight", type=float, default=None, help="orthogonal regulariser γ (default: the built-in run's)"
    )


def scale_title(args) -> str:
    """The reports' setup heading for the scale ``add_scale_arguments`` parsed: reduced, or the whole split."""
    return "reduced scale — read this first" if args.max_train_examples else "the built-in run's scale"


def enable_compilation_cache(directory: str) -> None:
    import jax

    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def split_sizes(task: str, args) -> tuple[int, int]:
    """Rows of the (possibly truncated) train split and of the dev split, to size the schedule up front."""
    from jax_adalora.models import load_tokenizer
    from jax_adalora.tasks import load_task

    data = load_task(task, tokenizer=load_tokenizer("minilm-l6"), max_seq_length=args.max_seq_length)
    n = len(data.train)
    n_train = min(n, args.max_train_examples) if args.max_train_examples else n
    return n_train, sum(len(split) for split in data.evals.values())


def scaled_run_overrides(task: str, seed: int, total_steps: int, args, output_dir: Path, **fields) -> dict:
    """The built-in run at the study's scale (``add_scale_arguments``), schedule scaled to ``total_steps``,
    one evaluation at the end, no export; ``fields`` (score, statistics, ranks, ...) override the rest."""
    from jax_adalora.cli.profiles import DEFAULT_RUN

    schedule = scaled_schedule(
        total_steps, init_fraction=args.init_fraction, final_fraction=args.final_fraction, delta_t=args.delta_t
    )
    alpha, gamma = adapter_values(args)
    run = dict(
        DEFAULT_RUN,
        alpha=alpha,
        orth_reg_weight=gamma,
        task=task,
        seed=seed,
        epochs=args.epochs,
        batch_size=args.batch_size,
        max_seq_length=args.max_seq_length,
        max_train_examples=args.max_train_examples,
        **({"learning_rate": args.learning_rate} if args.learning_rate else {}),
        output_dir=str(output_dir),
        eval_every=total_steps,  # evaluate once, at the end
        log_every=max(total_steps // 8, 1),
        export=False,
        keep_checkpoints=1,
        **schedule,
    )
    return {**run, **fields}


def config_difference(run_dir: Path, wanted: dict) -> str | None:
    """How the finished run in ``run_dir`` differs from ``wanted`` (a ``RunConfig.to_dict()``): the first field,
    output folder aside, whose value in the run's ``config.json`` is not the one asked for, as
    ``made with NAME=..., this study asks NAME=...``; ``None`` when every field matches. Sections the run wrote
    beyond ``wanted`` (the resolved task and schedule) are not settings and are not compared."""
    made = json.loads((Path(run_dir) / "config.json").read_text())
    wanted = json.loads(json.dumps(wanted))  # as the run wrote it: tuples as lists
    for section, fields in wanted.items():
        for name, value in fields.items():
            if name != "output_dir" and made.get(section, {}).get(name) != value:
                return f"made with {name}={made.get(section, {}).get(name)!r}, this study asks {name}={value!r}"
    return None


def adapter_values(args) -> tuple[float, float]:
    """``(α, γ)`` of a study's runs: its ``--alpha`` / ``--orth-reg-weight``, else the built-in run's."""
    from jax_adalora.cli.profiles import DEFAULT_RUN

    alpha, gamma = getattr(args, "alpha", None), getattr(args, "orth_reg_weight", None)
    return (
        DEFAULT_RUN["alpha"] if alpha is None else alpha,
        DEFAULT_RUN["orth_reg_weight"] if gamma is None else gamma,
    )


def learning_rate_value(args) -> float:
    """The runs' peak learning rate: the study's ``--learning-rate``, else the built-in run's."""
    from jax_adalora.cli.profiles import DEFAULT_RUN

    return args.learning_rate or DEFAULT_RUN["learning_rate"]


def learning_rate_text(args) -> str:
    """The runs' learning rate as the reports state it, naming the built-in run's when it differs:
    ``0.001 (the built-in run uses 0.002; see Reading)``."""
    from jax_adalora.cli.profiles import DEFAULT_RUN

    lr, built_in = learning_rate_value(args), DEFAULT_RUN["learning_rate"]
    return f"{lr:g}" + (f" (the built-in run uses {built_in:g}; see Reading)" if lr != built_in else "")


def adapter_scale_text(args) -> str:
    """The runs' adapter scale and regulariser weight, as the reports state them: ``α = 32, γ = 0``."""
    alpha, gamma = adapter_values(args)
    return f"α = {alpha:g}, γ = {gamma:g}"


def command_line(study: str, argv) -> str:
    """How the study was invoked, for its report: ``python -m scripts.studies.<study> <flags>``.

    Args:
      study: the study's module name in ``scripts.studies`` (``"score_study"``).
      argv: the flags it was given; ``None`` for the process's own (``sys.argv[1:]``).

    Returns:
      The command line, runnable from the repository root.
    """
    import sys

    return f"python -m scripts.studies.{study} " + " ".join(sys.argv[1:] if argv is None else argv)


def scaled_schedule(total_steps: int, *, init_fraction: float, final_fraction: float, delta_t: int) -> dict[str, int]:
    """AdaLoRA's ``t_init`` / ``t_final`` as fractions of the run, rounded, leaving >= 1 step to decrease in.

    Returns ``{"t_init": ..., "t_final": ..., "delta_t": ...}`` satisfying
    ``t_init < total_steps - t_final`` (what ``AdaLoRAConfig.validate_schedule`` asks).
    """
    if total_steps < 2:
        raise ValueError(f"scaled_schedule: total_steps={total_steps}, needs >= 2")
    if not (0 <= init_fraction < 1 and 0 <= final_fraction < 1 and init_fraction + final_fraction < 1):
        raise ValueError("scaled_schedule: fractions must be in [0, 1) and sum to < 1")
    t_init = int(round(init_fraction * total_steps))
    t_final = int(round(final_fraction * total_steps))
    while t_init >= total_steps - t_final:  # rounding can eat the decreasing phase of a very short run
        if t_final > 0:
            t_final -= 1
        else:
            t_init -= 1
    return {"t_init": t_init, "t_final": t_final, "delta_t": int(delta_t)}


# ---- Markdown ------------------------------------------------------------------------------------


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table; cells are ``str()``-ed, floats as given by the caller."""
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"markdown_table: row {row!r} has {len(row)} cells, expected {len(headers)}")
    lines = ["| " + " | ".join(str(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# ---- outputs -------------------------------------------------------------------------------------


def git_revision() -> str:
    """``HEAD``'s commit of the repository this file is in, with ``+dirty`` when tracked files changed."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("+dirty" if status.stdout.strip() else "")


def recorded_revision(scratch: Path) -> str:
    """The commit the runs in ``scratch`` were made with: recorded by the first call, read back later."""
    path = Path(scratch) / "git_revision.txt"
    now = git_revision()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(now + "\n")
        return now
    recorded = path.read_text().strip()
    if recorded != now:
        print(f"note: the runs in {scratch} were started at {recorded}; the checkout is now at {now}", flush=True)
    return recorded


def snippet_section(name: str, text: str) -> str:
    """``text`` between the markers of a named section, which the docs include from a generated report
    (``--8<-- "docs/studies/<study>/REPORT.md:NAME"``, pymdownx.snippets); the markers are invisible when
    rendered."""
    return f"<!-- --8<-- [start:{name}] -->\n{text}<!-- --8<-- [end:{name}] -->\n"


def reading_text(out_dir: str | Path) -> str:
    """The hand-written reading of a study (``reading.md`` in its output folder), or a placeholder."""
    path = Path(out_dir) / "reading.md"
    return path.read_text() if path.exists() else "(not written yet: put it in reading.md beside this report)\n"


def write_text(path: str | Path, text: str) -> None:
    from jax_adalora.cli.report import atomic_write_bytes

    atomic_write_bytes(path, text.encode())


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


# ---- run records: a study's finished runs, kept in the repository --------------------------------

RUN_RECORDS = "runs.json"


def run_key(task: str, name: str, seed: int) -> str:
    """A run's key in ``<out>/runs.json``: ``<task>/<name>-s<seed>`` (``name``: the study's setting or variant)."""
    return f"{task}/{name}-s{seed}"


def load_run_records(out: str | Path) -> dict[str, dict]:
    """Every finished run's record in ``<out>/runs.json``, by key (empty before the first)."""
    path = Path(out) / RUN_RECORDS
    return json.loads(path.read_text()) if path.exists() else {}


def save_run_record(out: str | Path, key: str, record: dict) -> None:
    """Adds (or replaces) ``record`` under ``key`` in ``<out>/runs.json``.

    Several processes may add records to one folder (a study split over seeds, one process per core): the
    file is read, updated and atomically replaced under an exclusive lock on the folder itself (no lock file
    is left beside the records), so no record is lost."""
    import fcntl

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    folder = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        records = load_run_records(out)
        records[key] = record
        write_json(out / RUN_RECORDS, dict(sorted(records.items())))
    finally:
        os.close(folder)  # releases the lock


def check_reusable(where: str, recorded: dict, overrides: dict) -> None:
    """Raises ``ValueError`` naming ``where`` and the first differing field when a recorded run's settings
    (its training-command overrides) are not ``overrides``; the output folder is not a setting."""
    for key in sorted(set(recorded) | set(overrides)):
        if key != "output_dir" and recorded.get(key) != overrides.get(key):
            raise ValueError(
                f"{where}: made with {key}={recorded.get(key)!r}, this study asks {key}={overrides.get(key)!r}; "
                "pass another --out (or remove the record to run it again)"
            )


def save_rank_panels(
    panels: Mapping[str, Mapping[str, float]], path: str | Path, *, title: str = "", per_row: int = 4
) -> None:
    """Rank heatmaps (rows: layers, columns: matrix types), one panel per ``{title: ranks}``, at most ``per_row``
    panels side by side, then the next row.

    Ranks may be means over seeds; cells show one decimal then. All panels share one colour scale.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jax_adalora.cli.report import rank_table

    tables = {name: rank_table(ranks) for name, ranks in panels.items()}
    vmax = max(float(np.nanmax(t[2])) for t in tables.values())
    first_layers, first_kinds, _ = next(iter(tables.values()))
    width = 1.0 * len(first_kinds) + 0.6
    height = 0.42 * len(first_layers) + 2.0
    columns = min(per_row, len(tables))
    rows = -(-len(tables) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(width * columns + 1.2, height * rows), squeeze=False)
    for ax in axes.flat[len(tables) :]:
        ax.set_visible(False)
    image = None
    for ax, (name, (layers, kinds, table)) in zip(axes.flat, tables.items(), strict=False):  # spare axes hidden above
        image = ax.imshow(table, cmap="YlGn", aspect="auto", vmin=0, vmax=vmax)
        ax.set_xticks(range(len(kinds)), [_short_kind(k) for k in kinds], rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(layers)), [f"L{i}" for i in layers], fontsize=7)
        integral = bool(np.all(np.isnan(table) | (table == np.round(table))))
        for i in range(len(layers)):
            for j in range(len(kinds)):
                if not np.isnan(table[i, j]):
                    text = f"{int(table[i, j])}" if integral else f"{table[i, j]:.1f}"
                    ax.text(j, i, text, ha="center", va="center", fontsize=6)
        ax.set_title(f"{name}\n(total {np.nansum(table):.0f})", fontsize=8)
    fig.colorbar(image, ax=list(axes.flat), label="kept rank", fraction=0.02)
    if title:
        fig.suptitle(title, fontsize=9)
    _save_figure(fig, path)


_SHORT_KINDS = {
    "attention.query": "Wq",
    "attention.key": "Wk",
    "attention.value": "Wv",
    "attention.output": "Wo",
    "intermediate": "Wf1",
    "output": "Wf2",
}


def _short_kind(kind: str) -> str:
    """The AdaLoRA paper's matrix names (Wq, Wk, Wv, Wo, Wf1, Wf2) where they apply."""
    return _SHORT_KINDS.get(kind, kind)


def _save_figure(fig, path: str | Path) -> None:
    import io

    import matplotlib.pyplot as plt

    from jax_adalora.cli.report import atomic_write_bytes

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    Path(path).chmod(0o644)


def save_line_plot(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    ylim: tuple[float, float] | None = None,
) -> None:
    """One line per ``{label: (x, y)}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 3.4))
    for label, (x, y) in series.items():
        ax.plot(x, y, marker="o", markersize=3, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    _save_figure(fig, path)
