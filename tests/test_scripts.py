"""The maintained scripts: each is a module of ``scripts.benchmarks`` or ``scripts.studies`` whose docstring opens
with a one-line purpose and whose ``--help`` prints its flags (no benchmark or study runs)."""

import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODULES = sorted(
    f"scripts.{path.parent.name}.{path.stem}"
    for folder in ("benchmarks", "studies")
    for path in (ROOT / "scripts" / folder).glob("*.py")
    if path.stem != "__init__" and path.stem != "study_helpers"
)


def test_the_maintained_scripts_are_found():
    assert {"scripts.benchmarks.bench", "scripts.studies.score_study", "scripts.studies.compare_stats"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_purpose_and_help(name, monkeypatch, capsys):
    module = importlib.import_module(name)
    purpose = module.__doc__.splitlines()[0]
    assert purpose.endswith(".") and len(purpose) <= 120, f"{name}: first docstring line {purpose!r}"
    monkeypatch.setattr(sys, "argv", [f"python -m {name}", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        module.main()
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: ")


def test_studies_record_the_module_command_they_were_run_with():
    from scripts.studies import study_helpers

    command = study_helpers.command_line("score_study", ["--seeds", "0", "1"])
    assert command == "python -m scripts.studies.score_study --seeds 0 1"


def test_the_llm_run_record_reads_gnu_time_and_tabulates(tmp_path):
    from scripts.studies import llm_run_record

    log = tmp_path / "peft-s0.log"
    log.write_text(
        "step 300/300 loss 0.1\n\tElapsed (wall clock) time (h:mm:ss or m:ss): 1:02:03.5\n"
        "\tMaximum resident set size (kbytes): 4194304\n"
    )
    assert llm_run_record.gnu_time(log) == {"wall_seconds": 3723.5, "peak_rss_mb": 4096}
    (tmp_path / "peft-s0.json").write_text(
        '{"results": {"validation": {"exact_match": 0.9125, "loss": 0.31}}, "kept_triplets": 1680, '
        '"total_steps": 300, "train_seconds": 1500.0}'
    )
    rows = llm_run_record.collect(tmp_path, [0])
    assert [r["implementation"] for r in rows] == ["PEFT AdaLoRA (sensitivity)"]
    assert "| PEFT AdaLoRA (sensitivity) | 0 | 0.9125 | 0.3100 | 1680 | 300 | 5.00 | 1500 | 3724 | 4096 |" in (
        llm_run_record.report(rows)
    )
    bar = tmp_path / "bar.log"
    bar.write_text("train:   0%| | 1/300 [01:28<2:25:40, 88.29s/step]\rtrain: 100%| | 300/300 [25:47<00:00]\r"
                   "train: 100%| | 300/300 [1:27:54<00:00]")  # fmt: skip
    assert llm_run_record.progress_seconds(bar, 300) == (88.0, 1547.0)
