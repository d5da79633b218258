"""Own data through ``datasets``: tasks inferred from csv/tsv/jsonl/parquet files, their errors, the tokenisation
cache, schedules in fractions of the run, and ``python -m jax_adalora.predict``. All files are written here."""

from __future__ import annotations

import glob
import json

import numpy as np
import pandas as pd
import pytest
from tiny_assets import NEGATIVE, POSITIVE, make_tiny_bert, minilm_dir

from jax_adalora.allocator import budget_schedule
from jax_adalora.cli.predict import main as predict_main
from jax_adalora.cli.run_config import parse_args
from jax_adalora.cli.train import main as train_main
from jax_adalora.cli.train import train_and_evaluate
from jax_adalora.config import AdaLoRAConfig

TOPICS = {
    "business": ["shares fell after the bank report", "the company raised prices", "markets rallied on profits"],
    "sports": ["the striker scored twice", "a late goal won the match", "the team lost the final"],
    "tech": ["the new phone has a faster chip", "an update fixed the software bug", "the laptop battery lasts"],
    "science": ["the telescope saw a distant galaxy", "cells divide under the microscope", "the probe reached mars"],
    "politics": ["the senate passed the bill", "voters went to the polls", "the minister resigned today"],
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("model") / "tiny-bert", num_labels=2)


def topic_frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = [list(TOPICS)[i % len(TOPICS)] for i in range(n)]
    rng.shuffle(labels)
    return pd.DataFrame({"text": [TOPICS[k][int(rng.integers(3))] for k in labels], "label": labels})


def sentiment_pairs(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    label = rng.integers(2, size=n)
    first = [(POSITIVE if y else NEGATIVE)[int(rng.integers(6))] for y in label]
    second = [(POSITIVE if rng.random() < 0.5 else NEGATIVE)[int(rng.integers(6))] for _ in label]
    return pd.DataFrame({"sentence1": first, "sentence2": second, "label": label})


def flags(model_dir, out, *extra):
    return [
        "--model", str(model_dir), "--output-dir", str(out), "--epochs", "1", "--batch-size", "8",
        "--eval-batch-size", "8", "--r-init", "4", "--r-target", "2", "--learning-rate", "5e-3", "--log-every", "2",
        "--no-export", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def topic_run(model_dir, tmp_path_factory):
    """A five-class, string-label csv run, exported, with a test file labelled at the end."""
    root = tmp_path_factory.mktemp("topics")
    topic_frame(40, 0).to_csv(root / "train.csv", index=False)
    topic_frame(15, 1).to_csv(root / "dev.csv", index=False)
    topic_frame(6, 2)[["text"]].to_csv(root / "test.csv", index=False)
    out = root / "run"
    args = [*flags(model_dir, out, "--test-file", str(root / "test.csv")), "--export"]
    args += ["--train-file", str(root / "train.csv"), "--validation-file", str(root / "dev.csv")]
    args += ["--datasets-cache-dir", str(root / "cache")]
    final = train_and_evaluate(parse_args(args))
    return root, out, final


def test_string_label_csv_infers_a_five_class_task(topic_run):
    root, out, final = topic_run
    names = sorted(TOPICS)
    task = json.loads((out / "config.json").read_text())["task"]
    assert task["kind"] == "classification" and task["label_names"] == names and task["text_keys"] == ["text"]
    assert set(final["final"]) == {"step", "accuracy", "macro_f1"}
    assert final["task"] == root.name  # train.csv names only the split: the folder names the data
    merged = json.loads((out / "merged" / "config.json").read_text())
    assert merged["id2label"] == {str(i): n for i, n in enumerate(names)}
    assert merged["label2id"] == {n: i for i, n in enumerate(names)}
    base = json.loads((out / "peft_adapter" / "base_config.json").read_text())
    assert base["id2label"] == merged["id2label"]


def test_test_file_is_labelled_in_its_format(topic_run):
    root, out, final = topic_run
    labelled = pd.read_csv(out / "test.predictions.csv")
    assert len(labelled) == 6 and list(labelled["text"]) == list(pd.read_csv(root / "test.csv")["text"])
    assert set(labelled["prediction"]) <= set(TOPICS)
    probabilities = labelled[[f"probability_{n}" for n in sorted(TOPICS)]].to_numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert final["test_predictions"]["rows"] == 6


def test_predict_reproduces_the_runs_dev_accuracy(topic_run, capsys):
    root, out, final = topic_run
    target = root / "dev.predictions.jsonl"
    dev_jsonl = root / "dev.jsonl"
    pd.read_csv(root / "dev.csv").to_json(dev_jsonl, orient="records", lines=True)
    assert predict_main(["--run-dir", str(out), "--input-file", str(dev_jsonl), "--output-file", str(target)]) == 0
    summary = json.loads(capsys.readouterr().out)
    best = [h for h in _history(out) if h["step"] == final["best_step"]]
    assert summary["rows"] == 15 and summary["accuracy"] == pytest.approx(best[0]["accuracy"], rel=1e-5)
    labelled = pd.read_json(target, lines=True)
    assert list(labelled.columns[:2]) == ["text", "label"] and set(labelled["prediction"]) <= set(TOPICS)
    # An existing output is never replaced: one line, nothing written.
    before = target.read_bytes()
    assert predict_main(["--run-dir", str(out), "--input-file", str(dev_jsonl), "--output-file", str(target)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already exists" in err[0] and target.read_bytes() == before


def _history(out):
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{"step": line["step"], **line["eval"]} for line in lines if "eval" in line]


def test_predict_finds_the_text_under_another_usual_name(topic_run, tmp_path, capsys):
    """The run read 'text'; a file with 'sentence' (or a column named with --text-columns) works as well."""
    root, out, _ = topic_run
    frame = pd.read_csv(root / "dev.csv")
    frame.rename(columns={"text": "sentence"}).to_csv(tmp_path / "a.csv", index=False)
    frame.rename(columns={"text": "body"}).drop(columns="label").to_parquet(tmp_path / "b.parquet")
    for name, extra in (("a.csv", []), ("b.parquet", ["--text-columns", "body"])):
        assert predict_main(["--run-dir", str(out), "--input-file", str(tmp_path / name), *extra]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["rows"] == 15 and ("accuracy" in summary) == (name == "a.csv")
    assert len(pd.read_parquet(out / "b.predictions.parquet")) == 15


def test_predict_errors_name_the_file(topic_run, tmp_path, capsys):
    root, out, _ = topic_run
    no_text = tmp_path / "no_text.csv"
    pd.DataFrame({"body": ["x"]}).to_csv(no_text, index=False)
    for argv, expected in (
        (["--run-dir", str(tmp_path), "--input-file", str(no_text)], "no readable jax_adalora config.json"),
        (["--run-dir", str(out), "--input-file", str(no_text)], f"{no_text}: no column(s) 'text'"),
        (["--run-dir", str(out), "--input-file", str(tmp_path / "absent.csv")], "absent.csv does not exist"),
        (
            ["--run-dir", str(out), "--input-file", str(root / "test.csv"), "--output-file", str(tmp_path)],
            f"error: --output-file {tmp_path} is a directory; name a file in it, such as "
            f"{tmp_path / 'predictions.csv'}",
        ),
        (  # the run's --test-file already wrote RUN/test.predictions.csv: a second prediction is refused, not renamed
            ["--run-dir", str(out), "--input-file", str(root / "test.csv")],
            f"error: {out / 'test.predictions.csv'} already exists (the default output for --input-file "
            f"{root / 'test.csv'}); refusing to overwrite it: pass --output-file with a new path, or move the old file "
            "away",
        ),
    ):
        assert predict_main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err
    assert not list(out.glob("test.predictions-*"))


def squad_rows(n: int, seed: int) -> list[dict]:
    """Flat SQuAD records: a context of three topic sentences, a question, its answer word and offset."""
    rng = np.random.default_rng(seed)
    sentences = [t for ts in TOPICS.values() for t in ts]
    rows = []
    for i in range(n):
        context = " . ".join(sentences[int(k)] for k in rng.choice(len(sentences), 3, replace=False))
        word = str(rng.choice(context.split()))
        start = context.index(word)
        rows.append({"id": f"q{seed}-{i}", "question": f"where is {word}?", "context": context,
                     "answers": {"text": [word], "answer_start": [start]}})  # fmt: skip
    return rows


def test_predict_answers_squad_questions(model_dir, tmp_path, capsys):
    """SQuAD questions get answer texts: the official JSON without answers as a run's --test-file (one row per
    question, no scores), a flat dev file through predict (the run's dev scores)."""
    for name, n, seed in (("train", 24, 0), ("dev", 6, 1)):
        pd.DataFrame(squad_rows(n, seed)).to_json(tmp_path / f"{name}.jsonl", orient="records", lines=True)
    questions = [{"id": r["id"], "question": r["question"]} for r in squad_rows(6, 1)]
    paragraphs = [{"context": r["context"], "qas": [q]} for r, q in zip(squad_rows(6, 1), questions, strict=True)]
    official = tmp_path / "questions.json"
    official.write_text(json.dumps({"version": "1.1", "data": [{"title": "topics", "paragraphs": paragraphs}]}))
    out = tmp_path / "run"
    args = flags(model_dir, out, "--task", "squad", "--max-seq-length", "48", "--doc-stride", "16")
    args += ["--train-file", str(tmp_path / "train.jsonl"), "--validation-file", str(tmp_path / "dev.jsonl")]
    final = train_and_evaluate(parse_args([*args, "--test-file", str(official)]))
    capsys.readouterr()  # the run's progress lines
    assert final["test_predictions"]["rows"] == 6 and "f1" not in final["test_predictions"]
    answered = pd.read_json(out / "questions.predictions.json")
    assert list(answered["id"]) == [q["id"] for q in questions]
    target = tmp_path / "dev.predictions.jsonl"
    argv = ["--run-dir", str(out), "--input-file", str(tmp_path / "dev.jsonl"), "--output-file", str(target)]
    assert predict_main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    best = [h for h in _history(out) if h["step"] == final["best_step"]][0]
    assert summary["rows"] == 6 and summary["f1"] == pytest.approx(best["f1"], rel=1e-5)
    assert summary["exact_match"] == pytest.approx(best["exact_match"], rel=1e-5)
    labelled = pd.read_json(target, lines=True)
    assert list(labelled["id"]) == list(answered["id"])
    assert all(isinstance(p, str) and p in c for p, c in zip(labelled["prediction"], labelled["context"], strict=True))
    assert list(labelled["prediction"]) == list(answered["prediction"])  # the best adapters, both ways


def test_second_read_reuses_the_tokenisation_cache(topic_run, model_dir):
    from jax_adalora.models import load_tokenizer
    from jax_adalora.tasks.data_files import read_file
    from jax_adalora.tasks.label_inference import find_columns
    from jax_adalora.tasks.text_dataset import tokenised_rows

    root, out, _ = topic_run
    cache = root / "cache"
    before = sorted(glob.glob(str(cache / "**" / "*.arrow"), recursive=True))
    tokenizer = load_tokenizer(str(model_dir))  # a new tokenizer object, as a second run loads it
    length = json.loads((out / "config.json").read_text())["train"]["max_seq_length"]
    rows = read_file(root / "train.csv", cache_dir=cache)
    tokens = tokenised_rows(rows, tokenizer, find_columns(rows, "train.csv"), max_seq_length=length)
    assert [f["filename"] for f in tokens.cache_files][0] in before  # the run's tokenised features, read back
    assert sorted(glob.glob(str(cache / "**" / "*.arrow"), recursive=True)) == before  # nothing new written
    other = tokenised_rows(rows, tokenizer, find_columns(rows, "train.csv"), max_seq_length=16)
    assert other.cache_files[0]["filename"] not in before  # another length is another tokenisation


def test_tokenise_with_a_real_tokenizer():
    """The token ids every text task trains on, for single texts and truncated pairs (stored expectations)."""
    import datasets
    from transformers import AutoTokenizer

    from jax_adalora.tasks.label_inference import Columns
    from jax_adalora.tasks.text_dataset import tokenise

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    rows = datasets.Dataset.from_dict({"text": ["a fine film", "dull"]})
    single = tokenise(rows, tokenizer, Columns(("text",), "label"), max_seq_length=8, labels=np.array([1, 0], np.int32))
    assert single.input_ids.tolist() == [[101, 1037, 2986, 2143, 102], [101, 10634, 102, 0, 0]]
    assert single.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert single.lengths.tolist() == [5, 3] and single.labels.tolist() == [1, 0]
    long = " ".join(["word"] * 50)
    rows = datasets.Dataset.from_dict({"a": ["short one", long], "b": ["second text", long]})
    pair = tokenise(rows, tokenizer, Columns(("a", "b"), "label"), max_seq_length=12, labels=None)
    assert pair.width == 12 and pair.lengths.tolist() == [7, 12]
    assert pair.token_type_ids[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0]
    assert pair.input_ids.dtype == np.int32 and pair.labels is None


def test_pair_tsv_binary_int_labels(model_dir, tmp_path):
    sentiment_pairs(32, 0).to_csv(tmp_path / "train.tsv", sep="\t", index=False)
    sentiment_pairs(12, 1).to_csv(tmp_path / "dev.tsv", sep="\t", index=False)
    args = flags(model_dir, tmp_path / "run", "--train-file", str(tmp_path / "train.tsv"))
    final = train_and_evaluate(parse_args([*args, "--validation-file", str(tmp_path / "dev.tsv")]))
    task = json.loads((tmp_path / "run" / "config.json").read_text())["task"]
    assert task["text_keys"] == ["sentence1", "sentence2"] and task["label_names"] == ["0", "1"]
    assert set(final["final"]) == {"step", "accuracy", "macro_f1", "matthews_correlation"}


def test_float_label_jsonl_is_regression(model_dir, tmp_path):
    rng = np.random.default_rng(0)
    for name, n in (("train", 32), ("dev", 12)):
        frame = pd.DataFrame({"sentence": [POSITIVE[i % 6] for i in range(n)], "label": rng.uniform(0, 5, n)})
        frame.to_json(tmp_path / f"{name}.jsonl", orient="records", lines=True)
    args = flags(model_dir, tmp_path / "run", "--train-file", str(tmp_path / "train.jsonl"))
    final = train_and_evaluate(parse_args([*args, "--validation-file", str(tmp_path / "dev.jsonl")]))
    task = json.loads((tmp_path / "run" / "config.json").read_text())["task"]
    assert task["kind"] == "regression" and task["main_metric"] == "pearson"
    assert set(final["final"]) == {"step", "pearson", "spearman"}


def test_parquet_with_named_columns(model_dir, tmp_path):
    for name, n, seed in (("train", 32, 0), ("dev", 12, 1)):
        frame = sentiment_pairs(n, seed)
        frame = pd.DataFrame({"review": frame["sentence1"], "stars": np.where(frame["label"] == 1, "good", "bad")})
        frame.to_parquet(tmp_path / f"{name}.parquet")
    args = flags(model_dir, tmp_path / "run", "--train-file", str(tmp_path / "train.parquet"))
    args += ["--validation-file", str(tmp_path / "dev.parquet"), "--text-columns", "review", "--label-column", "stars"]
    final = train_and_evaluate(parse_args(args))
    task = json.loads((tmp_path / "run" / "config.json").read_text())["task"]
    assert task["text_keys"] == ["review"] and task["label_names"] == ["bad", "good"]
    assert 0.0 <= final["final"]["accuracy"] <= 1.0


def _bad_input(model_dir, tmp_path, capsys, train_text: str, dev_text: str, suffix: str = ".csv") -> str:
    train, dev = tmp_path / f"train{suffix}", tmp_path / f"dev{suffix}"
    train.write_text(train_text)
    dev.write_text(dev_text)
    out = tmp_path / "run"
    status = train_main(flags(model_dir, out, "--train-file", str(train), "--validation-file", str(dev)))
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1, err
    assert not out.exists()  # nothing written
    return err[0]


GOOD_TRAIN = "text,label\n" + "".join(f"{t},{k}\n" for k, ts in TOPICS.items() for t in ts)


def test_dev_label_unseen_in_train_names_file_and_row(model_dir, tmp_path, capsys):
    line = _bad_input(model_dir, tmp_path, capsys, GOOD_TRAIN, "text,label\nthe match,sports\nnew chip,weather\n")
    assert f"{tmp_path / 'dev.csv'}, row 2: label 'weather' is not among the train split's labels" in line


def test_missing_text_column_names_the_file(model_dir, tmp_path, capsys):
    line = _bad_input(model_dir, tmp_path, capsys, "body,label\na,x\nb,y\n", "body,label\na,x\n")
    assert f"{tmp_path / 'train.csv'}: no text column" in line and "columns: body, label" in line


def test_mixed_label_types_name_the_row(model_dir, tmp_path, capsys):
    train = '{"text": "a", "label": 1}\n{"text": "b", "label": 2}\n{"text": "c", "label": "three"}\n'
    line = _bad_input(model_dir, tmp_path, capsys, train, '{"text": "a", "label": 1}\n', suffix=".jsonl")
    assert f"{tmp_path / 'train.jsonl'}, row 3: label 'three' is text, but row 1's label 1 is a number" in line


def test_empty_split_names_the_file(model_dir, tmp_path, capsys):
    line = _bad_input(model_dir, tmp_path, capsys, GOOD_TRAIN, "text,label\n")
    assert line == f"error: {tmp_path / 'dev.csv'}: no examples in the file"


def test_missing_label_and_empty_text_name_the_row(model_dir, tmp_path, capsys):
    line = _bad_input(model_dir, tmp_path, capsys, GOOD_TRAIN + "orphan text,\n", "text,label\nNA,sports\n")
    assert f"{tmp_path / 'train.csv'}, row 16: no label in column 'label'" in line
    line = _bad_input(model_dir, tmp_path, capsys, GOOD_TRAIN, 'text,label\n"",sports\n')
    assert f"{tmp_path / 'dev.csv'}, row 1: column 'text' is empty" in line


def test_a_few_text_or_nan_labels_in_a_number_column_are_refused(model_dir, tmp_path, capsys):
    """Issue 36: one ``nan`` in a regression column, or ``good`` in a 0/1 column, once made a classification task
    with a class per distinct value; now one line names the rows and values."""
    regression = "text,label\n" + "".join(f"t{i},{i / 7:.3f}\n" for i in range(8)) + "t,nan\n"
    line = _bad_input(model_dir, tmp_path, capsys, regression, "text,label\na,0.5\n")
    assert line == (
        f"error: {tmp_path / 'train.csv'}, row 9: no label in column 'label' ('nan'), whose other 8 rows hold "
        "numbers; give every row its label"
    )
    binary = "text,label\n" + "".join(f"t{i},{i % 2}\n" for i in range(8)) + "t,good\nu,bad\n"
    line = _bad_input(model_dir, tmp_path, capsys, binary, "text,label\na,1\n")
    assert line == (
        f"error: {tmp_path / 'train.csv'}, rows 9, 10: labels 'good', 'bad' are not numbers, but the other 8 labels "
        "in column 'label' are numbers; use one type for the whole column"
    )


def test_a_duplicated_header_column_is_refused(model_dir, tmp_path, capsys):
    line = _bad_input(model_dir, tmp_path, capsys, "text,label,label\na,x,y\nb,y,x\n", "text,label\na,x\n")
    assert (
        line
        == f"error: {tmp_path / 'train.csv'}, line 1: column 'label' appears twice in the header; rename or drop one"
    )


def test_a_whitespace_only_text_is_refused_naming_the_row(model_dir, tmp_path, capsys):
    line = _bad_input(model_dir, tmp_path, capsys, GOOD_TRAIN, "text,label\nthe match,sports\n   ,tech\n")
    assert line == f"error: {tmp_path / 'dev.csv'}, row 2: column 'text' holds only whitespace"


def test_tsv_cells_are_read_without_quote_handling(tmp_path):
    from jax_adalora.tasks.data_files import read_file

    path = tmp_path / "quotes.tsv"
    path.write_text('text\tlabel\n"a quote opens this\t1\nsay "hi"\t0\n"whole"\t1\n')
    rows = read_file(path, cache_dir=tmp_path / "cache")
    assert rows["text"] == ['"a quote opens this', 'say "hi"', '"whole"'] and rows["label"] == [1, 0, 1]


def test_offline_hub_dataset_fails_at_once_naming_local_files(model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("jax_adalora.tasks.data_files.endpoint_reachable", lambda: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    status = train_main(flags(model_dir, tmp_path / "run", "--dataset", "rotten_tomatoes"))
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "--dataset rotten_tomatoes: the Hugging Face hub is unreachable" in err[0]
    assert "--train-file and --validation-file" in err[0] and not (tmp_path / "run").exists()


# ---- schedules that fit any run length ----------------------------------------------------------------


def test_fractional_schedule_flags():
    run = parse_args(["--t-init", "0.1", "--t-final", "30"])
    assert run.adalora.t_init == 0.1 and isinstance(run.adalora.t_final, int) and run.adalora.t_final == 30
    assert AdaLoRAConfig(t_init=0.1, t_final=0.2).for_run(297).t_init == 30  # the built-in run's 30 and 60
    assert AdaLoRAConfig(t_init=0.1, t_final=0.2).for_run(297).t_final == 60
    with pytest.raises(ValueError, match=r"t_init=1\.5: expected a whole number of steps >= 0, or a fraction"):
        AdaLoRAConfig(t_init=1.5)
    with pytest.raises(ValueError, match=r"t_init=0\.6 \(6 steps\) must be < total_steps - AdaLoRAConfig\.t_final"):
        AdaLoRAConfig(t_init=0.6, t_final=0.4).for_run(10)


def test_ten_thousand_step_run_prunes_after_its_first_tenth():
    config = AdaLoRAConfig(t_init=0.1, t_final=0.2).for_run(10_000)
    schedule = budget_schedule(64, 32, config.t_init, config.t_final, 10_000, 10)
    assert (config.t_init, config.t_final) == (1000, 2000)
    assert all(schedule.reference(step) == (64, False) for step in range(1001))  # no pruning in the first 10 %
    budget, masks = schedule.reference(1010)  # the first masking step after it
    assert masks and budget < 64 and schedule.reference(8001) == (32, True)


def test_seventy_five_step_run_reaches_the_target_with_the_derived_schedule(model_dir, tmp_path):
    frame = pd.DataFrame({"text": [POSITIVE[i % 6] if i % 2 else NEGATIVE[i % 6] for i in range(600)]})
    frame["label"] = [i % 2 for i in range(600)]
    frame.to_csv(tmp_path / "train.csv", index=False)
    frame.head(8).to_csv(tmp_path / "dev.csv", index=False)
    args = flags(model_dir, tmp_path / "run", "--train-file", str(tmp_path / "train.csv"))
    args = [*args, "--validation-file", str(tmp_path / "dev.csv"), "--log-every", "25"]
    final = train_and_evaluate(parse_args(args))
    schedule = json.loads((tmp_path / "run" / "config.json").read_text())["schedule"]
    assert schedule == {"total_steps": 75, "t_init": 8, "t_final": 15}
    assert final["steps"] == 75 and final["total_budget"] == final["target_budget"]
    budgets = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    budgets = [b["budget"] for b in budgets if "budget" in b]
    assert budgets[0] > budgets[-1] == final["target_budget"]


def test_data_memory_benchmark_reports_every_phase(tmp_path, capsys):
    """The 400,000-pair memory benchmark's program, on 64 rows: it writes its JSON with every phase."""
    from scripts.benchmarks import data_memory

    assert data_memory.main(["--rows", "64", "--out", str(tmp_path / "memory.json")]) == 0
    result = json.loads((tmp_path / "memory.json").read_text())
    assert result["rows"] == 64 and [p.get("rows") for p in result["phases"]] == [None, 64, 64]
    assert all(p["peak_rss_mb"] > 0 for p in result["phases"][1:]) and "peak RSS" in capsys.readouterr().out


def test_resuming_a_finished_run_rewrites_its_test_predictions(topic_run, model_dir, caplog):
    """The training command's --test-file output is the run's own: a resume of the finished run writes it again
    at the same path (no ``test.predictions-2.csv``), and the inferred label set was logged."""
    root, out, _ = topic_run
    args = [*flags(model_dir, out, "--test-file", str(root / "test.csv")), "--resume"]
    args += ["--train-file", str(root / "train.csv"), "--validation-file", str(root / "dev.csv")]
    args += ["--datasets-cache-dir", str(root / "cache")]
    with caplog.at_level("INFO", logger="jax_adalora.tasks"):
        train_and_evaluate(parse_args(args))
    assert sorted(p.name for p in out.glob("test.predictions*")) == ["test.predictions.csv"]
    assert f"5 labels: {', '.join(sorted(TOPICS))}" in caplog.text
