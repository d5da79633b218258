"""The results page's paired comparisons are recomputed from the run records they quote, so none can go stale."""

import json
import re
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SEEDS = range(5)
# Each comparison row of docs/results.md: (section, key) of its two sides in docs/default_run_seeds.json.
SIDES = {
    "our default run − PEFT as commonly run at lr 1e-3": (
        ("defaults_now", "ours_sensitivity"),
        ("defaults_lr_1e-3", "peft_common"),
    ),
    "our run at lr 1e-3 − PEFT as commonly run at lr 1e-3": (
        ("defaults_lr_1e-3", "ours_sensitivity"),
        ("defaults_lr_1e-3", "peft_common"),
    ),
    "our default run − our run at lr 1e-3": (
        ("defaults_now", "ours_sensitivity"),
        ("defaults_lr_1e-3", "ours_sensitivity"),
    ),
    "our default run − the former defaults' run (sensitivity, next section)": (
        ("defaults_now", "ours_sensitivity"),
        ("former_defaults", "ours_sensitivity"),
    ),
    "our run at lr 1e-3 − the former defaults' run": (
        ("defaults_lr_1e-3", "ours_sensitivity"),
        ("former_defaults", "ours_sensitivity"),
    ),
    "GSNR − sensitivity, both at the defaults but lr 1e-3": (
        ("defaults_lr_1e-3", "ours_gsnr"),
        ("defaults_lr_1e-3", "ours_sensitivity"),
    ),
    "GSNR at lr 1e-3 − GSNR at the former defaults": (
        ("defaults_lr_1e-3", "ours_gsnr"),
        ("former_defaults", "ours_gsnr"),
    ),
    "our GSNR run at lr 1e-3 − PEFT as commonly run at lr 1e-3": (
        ("defaults_lr_1e-3", "ours_gsnr"),
        ("defaults_lr_1e-3", "peft_common"),
    ),
}
ROW = re.compile(
    r"^\| (?P<label>[^|]+?) \| [^|]+ \| (?P<mean>[−+-]\d+\.\d\d) ± (?P<se>\d+\.\d\d) \| (?P<ahead>\d+) of 5 \|$"
)


def _accuracies(records: dict, section: str, key: str) -> np.ndarray:
    by_seed = records[section]["accuracy_by_seed"][key]
    return np.array([by_seed[str(seed)] for seed in SEEDS])


def test_every_paired_row_equals_its_records():
    records = json.loads((ROOT / "docs" / "default_run_seeds.json").read_text())
    page = (ROOT / "docs" / "results.md").read_text().splitlines()
    rows = {m["label"]: m for m in map(ROW.match, page) if m and m["label"] in SIDES}
    assert set(rows) == set(SIDES), sorted(set(SIDES) - set(rows))
    for label, (a, b) in SIDES.items():
        diff = 100 * (_accuracies(records, *a) - _accuracies(records, *b))
        row = rows[label]
        assert float(row["mean"].replace("−", "-")) == round(diff.mean(), 2), label
        assert float(row["se"]) == round(diff.std(ddof=1) / np.sqrt(diff.size), 2), label
        assert int(row["ahead"]) == int((diff > 0).sum()), label


# ---- every quoted per-seed figure, on every page that quotes one -----------------------------------------------

# The commands of the results page's per-seed tables, and the (section, key) of their records.
PER_SEED_ROWS = {
    "`python -m jax_adalora.train --seed S`": ("defaults_now", "ours_sensitivity"),
    "`python -m jax_adalora.train --learning-rate 0.001 --seed S`": ("defaults_lr_1e-3", "ours_sensitivity"),
    "`python -m jax_adalora.train --score gsnr --learning-rate 0.001 --seed S`": ("defaults_lr_1e-3", "ours_gsnr"),
    "`python -m scripts.studies.peft_baseline --peft-style common --learning-rate 0.001 --seed S`": (
        "defaults_lr_1e-3",
        "peft_common",
    ),
    "`python -m scripts.studies.peft_baseline --peft-style common --seed S`": ("defaults_now", "peft_common_lr_2e-3"),
    "`python -m jax_adalora.train --score sensitivity --head-pattern 'classifier\\..*' --learning-rate 0.001 "
    "--seed S`": (
        "defaults_lr_1e-3",
        "ours_sensitivity_classifier_only",
    ),
    "`python -m jax_adalora.train --score gsnr --head-pattern 'classifier\\..*' --learning-rate 0.001 --seed S`": (
        "defaults_lr_1e-3",
        "ours_gsnr_classifier_only",
    ),
    "`python -m jax_adalora.train --config configs/movie.py:former --score gsnr --seed S`": (
        "former_defaults",
        "ours_gsnr",
    ),
    "`python -m scripts.studies.peft_baseline --config configs/movie.py:former --seed S`": (
        "former_defaults",
        "peft_adalora",
    ),
    "`python -m jax_adalora.train --config configs/movie.py:former --score sensitivity --seed S`": (
        "former_defaults",
        "ours_sensitivity",
    ),
    "`python -m jax_adalora.train --config configs/movie.py:former --score gsnr --smoothing ema --seed S`": (
        "former_defaults",
        "ours_gsnr_ema_smoothing",
    ),
}
PER_SEED = re.compile(
    r"^\| (?P<command>`[^`]+`)[^|]* \| (?P<values>\d\.\d{4}(?: / (?:\d\.\d{4}|—))*) \|\s*(?P<summary>[^|]*?)\s*\|$"
)


def _mean_std(values) -> str:
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"


def test_every_per_seed_row_equals_its_records():
    """Each per-seed row of the results page: its values are its records' seeds 0, 1, ... in order (4 decimals),
    and, with all five, the mean ± sample standard deviation. A row whose command has no records here fails."""
    records = json.loads((ROOT / "docs" / "default_run_seeds.json").read_text())
    rows = [m for m in map(PER_SEED.match, (ROOT / "docs" / "results.md").read_text().splitlines()) if m]
    assert len(rows) == len(PER_SEED_ROWS)
    for row in rows:
        assert row["command"] in PER_SEED_ROWS, f"results.md quotes {row['command']} with no records in this test"
        by_seed = records[PER_SEED_ROWS[row["command"]][0]]["accuracy_by_seed"][PER_SEED_ROWS[row["command"]][1]]
        quoted = [v for v in row["values"].split(" / ") if v != "—"]
        assert quoted == [f"{by_seed[str(s)]:.4f}" for s in range(len(quoted))], row["command"]
        if len(quoted) == 5:
            assert row["summary"] == _mean_std([by_seed[str(s)] for s in SEEDS]), row["command"]


def test_the_getting_started_figures_equal_the_records():
    """The built-in run's seed-0 accuracy and its five-seed mean ± std, as the getting-started page quotes them."""
    by_seed = json.loads((ROOT / "docs" / "default_run_seeds.json").read_text())["defaults_now"]["accuracy_by_seed"]
    ours = by_seed["ours_sensitivity"]
    page = (ROOT / "docs" / "getting-started.md").read_text()
    assert f'"accuracy": {ours["0"]:.4f}' in page
    assert f"its dev accuracy is {_mean_std([ours[str(s)] for s in SEEDS])}" in page
    # the whole output of the seed-0 run: its printed summary (6 significant digits) and evaluation line
    seed_0 = ours["0"]
    assert f'"accuracy": {float(f"{seed_0:.6g}")}' in page and f"accuracy={seed_0:.4f}" in page


def test_the_smollm2_step_table_equals_its_benchmark_record():
    """docs/performance.md's SmolLM2 step table: each row's median seconds, compile seconds and GFLOP/s as the
    benchmark's JSON has them, and the two ratios quoted beside it."""
    bench = json.loads((ROOT / "docs" / "bench_smollm2_135m.json").read_text())
    page = (ROOT / "docs" / "performance.md").read_text()
    rows = {r["name"]: r for r in bench["rows"]}
    labels = {
        "ours: sensitivity step (batch grad)": "ours: sensitivity step (batch gradient)",
        "ours: gsnr step (per-example)": "ours: GSNR step, exact per-example statistics",
        "peft: AdaLoRA step": "PEFT: AdaLoRA step",
    }
    for name, label in labels.items():
        row = rows[name]
        compile_s = "—" if row["compile_s"] is None else f"{row['compile_s']:.0f}"
        expected = f"| {label}{' (transformers `LlamaForCausalLM`)' if name.startswith('peft') else ''} | "
        expected += f"{row['median_s']:.2f} | {compile_s} | {row['gflops_per_s']:.0f} |"
        assert expected in page, expected
    sens, gsnr, peft = (rows[n]["median_s"] for n in labels)
    assert f"takes {gsnr / sens:.2f}× the" in page
    assert f"**Against PEFT: {peft / sens:.2f}×" in page


# ---- the score studies' tables, against the studies' own results.json -----------------------------------------

PAPER_ROWS = {
    "sensitivity (AdaLoRA's)": "sensitivity",
    "movement `−w·g`": "movement",
    "Fisher, exact": "fisher",
    "GSNR, exact": "gsnr",
    "Fisher, running": "fisher-running",
    "GSNR, running": "gsnr-running",
    "magnitude, unsmoothed": "magnitude",
    "saliency ½w²E[g²], exact": "saliency",
    "fixed rank 8, no masking": "fixed",
}
FULL_ROWS = {
    "sensitivity (AdaLoRA's)": "sensitivity",
    "Fisher, exact `E[g²]`": "fisher",
    "GSNR, exact `E[g]²/Var[g]`": "gsnr",
    "movement `−w·g`": "movement",
    "fixed rank 8, no masking (twice the adapter scale)": "fixed",
}


def _pm(entry: dict, spread: str = "std") -> str:
    return f"{100 * entry['mean']:.2f} ± {100 * entry[spread]:.2f}"


def _table_rows(page: list[str], labels) -> dict[str, list[str]]:
    rows = {}
    for line in page:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] in labels:
            rows.setdefault(cells[0], cells)
    return rows


def test_the_paper_length_score_table_equals_the_study_results():
    summary = json.loads((ROOT / "docs" / "studies" / "score_study_paper" / "results.json").read_text())["summary"]
    page = (ROOT / "docs" / "results.md").read_text().splitlines()
    start = next(i for i, line in enumerate(page) if line.startswith("## The scores at the seed paper's length"))
    rows = _table_rows(page[start:], PAPER_ROWS)
    assert set(rows) == set(PAPER_ROWS)
    for label, variant in PAPER_ROWS.items():
        s = summary[variant]
        expected = [_pm(s["movie-sentiment/accuracy"]), _pm(s["movie-rating/pearson"]), _pm(s["subjectivity/accuracy"])]
        expected.append(_pm(s["average"]))
        assert rows[label][1:5] == expected, label
        if variant != "sensitivity":
            gap = s["average_minus_sensitivity"]
            assert rows[label][5] == f"{100 * gap['mean']:+.2f} ± {100 * gap['se']:.2f} ({gap['seeds_better']} of 3)", (
                label
            )


def test_the_five_seed_score_table_equals_the_study_results():
    summary = json.loads((ROOT / "docs" / "studies" / "score_study_full" / "results.json").read_text())["summary"]
    page = (ROOT / "docs" / "results.md").read_text().splitlines()
    start = next(i for i, line in enumerate(page) if line.startswith("## The four scores (five seeds"))
    rows = _table_rows(page[start:], FULL_ROWS)
    assert set(rows) == set(FULL_ROWS)
    for label, variant in FULL_ROWS.items():
        s = summary[variant]
        assert rows[label][1] == _pm(s["average"]), label
        if variant != "sensitivity":
            gap = s["average_minus_sensitivity"]
            se = gap["std"] / np.sqrt(len(gap["values"]))
            assert rows[label][2] == f"{100 * gap['mean']:+.2f} ± {100 * se:.2f}".replace("-", "−"), label


VARIANT_TASKS = {"movie-sentiment": "accuracy", "movie-rating": "pearson", "subjectivity": "accuracy"}


def _section_rows(report: str, name: str) -> dict[str, list[str]]:
    """The rows of a generated report's snippet section, by their first cell."""
    body = report.split(f"<!-- --8<-- [start:{name}] -->\n", 1)[1].split(f"<!-- --8<-- [end:{name}] -->", 1)[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in body.splitlines() if line.startswith("| ")]
    return {row[0]: row for row in rows[1:]}  # the header row left out


def test_the_score_variant_tables_equal_their_run_records():
    """docs/results.md includes the variant study's tables from its report; every mean, standard deviation,
    paired difference, standard error, seeds-ahead and tasks-ahead count there is recomputed here with numpy from
    the per-run dev metrics in its results.json."""
    from scripts.studies import score_study

    folder = ROOT / "docs" / "studies" / "score_variants"
    results = json.loads((folder / "results.json").read_text())
    report = (folder / "REPORT.md").read_text()
    main, paired = _section_rows(report, "results"), _section_rows(report, "paired")
    seeds = [str(s) for s in results["scale"]["seeds"]]
    runs = results["runs"]

    def metric(variant: str, task: str, name: str) -> np.ndarray:
        return 100 * np.array([runs[task][variant][s]["metrics"][name] for s in seeds])

    def pm(values: np.ndarray) -> str:
        return f"{values.mean():.2f} ± {values.std(ddof=1):.2f}"

    def paired_text(gaps: np.ndarray) -> str:
        se = gaps.std(ddof=1) / np.sqrt(len(gaps))
        return f"{gaps.mean():+.2f} ± {se:.2f} ({int((gaps > 0).sum())} of {len(gaps)})"

    average = {
        v: np.mean([metric(v, t, m) for t, m in VARIANT_TASKS.items()], axis=0) for v in results["scale"]["scores"]
    }
    assert set(main) == {score_study.ROW_NAMES[v] for v in results["scale"]["scores"]}
    for variant in results["scale"]["scores"]:
        row = main[score_study.ROW_NAMES[variant]]
        assert row[1] == pm(metric(variant, "movie-sentiment", "accuracy")), variant
        assert row[2] == pm(metric(variant, "movie-rating", "pearson")), variant
        assert row[4] == pm(metric(variant, "subjectivity", "accuracy")), variant
        assert row[5] == pm(average[variant]), variant
        if variant == "sensitivity":
            continue
        cells = paired[score_study.ROW_NAMES[variant]]
        ahead = 0
        for column, (task, name) in enumerate(VARIANT_TASKS.items(), start=1):
            gaps = metric(variant, task, name) - metric("sensitivity", task, name)
            assert cells[column] == paired_text(gaps), (variant, task)
            ahead += gaps.mean() > 0 and (gaps > 0).sum() > len(gaps) / 2
        assert cells[4] == paired_text(average[variant] - average["sensitivity"]), variant
        assert cells[6] == f"{ahead} of 3", variant


def test_the_results_page_includes_only_report_sections_that_exist():
    """Every ``--8<-- "docs/studies/<study>/REPORT.md:NAME"`` of the results page names a section its report has."""
    page = (ROOT / "docs" / "results.md").read_text()
    named = re.findall(r'^--8<-- "(docs/studies/[a-z_]+/REPORT\.md):([a-z0-9-]+)"$', page, re.M)
    assert {path for path, _ in named} >= {
        "docs/studies/like_for_like/REPORT.md",
        "docs/studies/score_variants/REPORT.md",
    }
    like_for_like = {name for path, name in named if "like_for_like" in path}
    assert {"cells", "ours-peft", "score-sensitivity", "another-score-peft", "every-run"} <= like_for_like
    for path, name in named:
        report = (ROOT / path).read_text()
        assert f"<!-- --8<-- [start:{name}] -->" in report and f"<!-- --8<-- [end:{name}] -->" in report, (path, name)
