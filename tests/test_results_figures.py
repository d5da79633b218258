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
