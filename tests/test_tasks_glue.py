"""GLUE loading: GLUE's own TSV layouts, files with named columns, the hub offline, bad input."""

from __future__ import annotations

import csv
import json
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tiny_assets import minilm_dir

from jax_adalora.tasks import BatchIterator, TaskDataError, get_task_spec, load_task
from jax_adalora.tasks.glue import load_glue_splits
from jax_adalora.tasks.registry import GLUE_TASKS, TASKS

# Per task: GLUE's header (None: CoLA has none), then rows as (GLUE's fields joined by "|", texts, label id).
GLUE_ROWS = {
    "cola": (None, [
        ("gj04|1||Our friends won't buy this analysis.", ("Our friends won't buy this analysis.",), 1),
        ("gj04|0|*|They drank the pub.", ("They drank the pub.",), 0),
    ]),
    "sst2": ("sentence|label", [
        ('a "gorgeous" , witty film |1', ('a "gorgeous" , witty film ',), 1),  # unquoted: quotes are text
        ("dull and tedious|0", ("dull and tedious",), 0),
    ]),
    "mrpc": ("Quality|#1 ID|#2 ID|#1 String|#2 String", [
        ("1|702876|702977|Amrozi accused him .|He was accused .", ("Amrozi accused him .", "He was accused ."), 1),
        ("0|2108705|2108831|Yucaipa sold it .|It rained .", ("Yucaipa sold it .", "It rained ."), 0),
    ]),
    "qqp": ("id|qid1|qid2|question1|question2|is_duplicate", [
        ("201359|303345|303346|Why is it hot?|Why is it warm?|1", ("Why is it hot?", "Why is it warm?"), 1),
        ("263843|69383|380476|Who am I?|Where is Rome?|0", ("Who am I?", "Where is Rome?"), 0),
    ]),
    "stsb": ("index|genre|filename|year|old_index|source1|source2|sentence1|sentence2|score", [
        ("0|main-captions|MSRvid|2012test|0001|none|none|A plane takes off.|An air plane is taking off.|5.000",
         ("A plane takes off.", "An air plane is taking off."), 5.0),
        ("1|main-captions|MSRvid|2012test|0004|none|none|A man plays.|A cat sleeps.|0.500",
         ("A man plays.", "A cat sleeps."), 0.5),
    ]),
    "mnli": (
        "index|promptID|pairID|genre|sentence1_binary_parse|sentence2_binary_parse|sentence1_parse|"
        "sentence2_parse|sentence1|sentence2|label1|gold_label", [
        ("0|31193|31193n|government|(|(|(|(|Conceptually cream skimming.|Product and geography.|neutral|neutral",
         ("Conceptually cream skimming.", "Product and geography."), 1),
        ("1|101457|101457e|telephone|(|(|(|(|you know during the season|You lose the things.|entailment|entailment",
         ("you know during the season", "You lose the things."), 0),
        ("2|134793|134793e|fiction|(|(|(|(|One of our number|A member of my team|contradiction|contradiction",
         ("One of our number", "A member of my team"), 2),
    ]),
    "qnli": ("index|question|sentence|label", [
        ("0|When did it open?|It opened in 1990.|entailment", ("When did it open?", "It opened in 1990."), 0),
        ("1|Who wrote it?|The sky is blue.|not_entailment", ("Who wrote it?", "The sky is blue."), 1),
    ]),
    "rte": ("index|sentence1|sentence2|label", [
        ("0|No arms were found.|Arms were found.|not_entailment", ("No arms were found.", "Arms were found."), 1),
        ("1|A cat sat.|An animal sat.|entailment", ("A cat sat.", "An animal sat."), 0),
    ]),
}  # fmt: skip


def write_glue_tsv(path, task, rows=None):
    header, default_rows = GLUE_ROWS[task]
    rows = default_rows if rows is None else rows
    lines = ([] if header is None else [header]) + [fields for fields, _, _ in rows]
    lines = [line.replace("|", "\t") for line in lines]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_glue_dir(folder, task):
    folder.mkdir(parents=True, exist_ok=True)
    write_glue_tsv(folder / "train.tsv", task)
    dev_names = ("dev_matched.tsv", "dev_mismatched.tsv") if task == "mnli" else ("dev.tsv",)
    for name in dev_names:
        write_glue_tsv(folder / name, task)
    return folder


def named_records(task):
    spec = get_task_spec(task)
    return [dict(zip(spec.text_keys, texts, strict=True), label=label) for _, texts, label in GLUE_ROWS[task][1]]


def write_named(path, records):
    suffix = path.suffix
    if suffix == ".json":
        path.write_text(json.dumps(records))
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    elif suffix == ".csv":
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(records[0]))
            writer.writeheader()
            writer.writerows(records)
    elif suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(records), path)
    return path


def expected(task):
    rows = GLUE_ROWS[task][1]
    return [texts for _, texts, _ in rows], [label for _, _, label in rows]


def check_split(split, task):
    texts, labels = expected(task)
    spec = get_task_spec(task)
    assert [list(split.rows[key]) for key in spec.text_keys] == [list(column) for column in zip(*texts, strict=True)]
    if spec.kind == "regression":
        assert split.labels.dtype == np.float32
        np.testing.assert_allclose(split.labels, labels)
    else:
        assert split.labels.dtype == np.int32
        assert split.labels.tolist() == labels


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir())


def test_table_covers_the_glue_tasks():
    assert set(GLUE_TASKS) == set(GLUE_ROWS)
    assert get_task_spec("mnli").eval_splits == ("validation_matched", "validation_mismatched")
    assert get_task_spec("MNLI").label_names == ("entailment", "neutral", "contradiction")
    assert get_task_spec("stsb").kind == "regression" and get_task_spec("stsb").num_labels == 1
    assert get_task_spec("squad").num_labels == 0
    assert get_task_spec("movie_sentiment").name == "movie-sentiment"
    for spec in TASKS.values():
        assert spec.main_metric in spec.metrics


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown task 'mnli-x'.*cola, sst2.*movie-rating"):
        get_task_spec("mnli-x")


@pytest.mark.parametrize("task", sorted(GLUE_ROWS))
def test_glue_tsv_layout(tmp_path, task):
    train, evals = load_glue_splits(get_task_spec(task), data_dir=write_glue_dir(tmp_path / "x", task))
    check_split(train, task)
    assert list(evals) == list(get_task_spec(task).eval_splits)
    for split in evals.values():
        check_split(split, task)


@pytest.mark.parametrize("task", sorted(GLUE_ROWS))
@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv", ".parquet"])
def test_named_column_files(tmp_path, task, suffix):
    records = named_records(task)
    if task in ("qnli", "rte", "mnli") and suffix == ".csv":  # text labels are accepted as well as ids
        names = get_task_spec(task).label_names
        records = [dict(r, label=names[r["label"]]) for r in records]
    path = write_named(tmp_path / f"data{suffix}", records)
    train, evals = load_glue_splits(get_task_spec(task), train_file=path, validation_file=str(path))
    check_split(train, task)
    check_split(evals[get_task_spec(task).eval_splits[0]], task)


def test_glue_root_folder_and_mnli_two_validation_files(tmp_path):
    write_glue_dir(tmp_path / "glue" / "SST-2", "sst2")
    train, evals = load_glue_splits(get_task_spec("sst2"), data_dir=tmp_path / "glue")
    check_split(train, "sst2")
    m = write_named(tmp_path / "m.jsonl", named_records("mnli"))
    mm = write_named(tmp_path / "mm.jsonl", named_records("mnli")[:1])
    _, evals = load_glue_splits(get_task_spec("mnli"), train_file=m, validation_file=f"{m},{mm}")
    assert {k: len(v) for k, v in evals.items()} == {"validation_matched": 3, "validation_mismatched": 1}


def test_load_task_tokenises_and_evaluates(tmp_path, tokenizer):
    data = load_task("mnli", tokenizer=tokenizer, data_dir=write_glue_dir(tmp_path / "MNLI", "mnli"), max_seq_length=16)
    assert list(data.evals) == ["validation_matched", "validation_mismatched"]
    split = data.evals["validation_matched"]
    assert split.input_ids.dtype == np.int32 and split.input_ids.shape[1] <= 16
    first = tokenizer.decode(split.input_ids[0, : split.lengths[0]], skip_special_tokens=True)
    assert first.startswith("conceptually cream")
    assert split.token_type_ids[0, split.lengths[0] - 1] == 1  # the hypothesis is segment 1
    logits = np.eye(3)[[1, 0, 0]]  # right, right, wrong
    assert data.evaluate("validation_matched", logits) == {"accuracy": pytest.approx(2 / 3)}
    batches = list(BatchIterator(split, 2, shuffle=False, seed=0))
    assert [b["example_mask"].tolist() for b in batches] == [[1, 1], [1, 0]]

    data = load_task("stsb", tokenizer=tokenizer, data_dir=write_glue_dir(tmp_path / "STS-B", "stsb"))
    result = data.evaluate("validation", np.array([[4.0], [1.0]]))
    assert result["pearson"] == pytest.approx(1.0) and result["spearman"] == pytest.approx(1.0)


def test_max_examples_subsets(tmp_path, tokenizer):
    rows = [(f"sentence {i}|{i % 2}", None, None) for i in range(20)]
    folder = tmp_path / "SST-2"
    folder.mkdir()
    write_glue_tsv(folder / "train.tsv", "sst2", rows)
    write_glue_tsv(folder / "dev.tsv", "sst2", rows)
    a = load_task("sst2", tokenizer=tokenizer, data_dir=folder, max_train_examples=5, max_eval_examples=3, seed=1)
    b = load_task("sst2", tokenizer=tokenizer, data_dir=folder, max_train_examples=5, max_eval_examples=3, seed=1)
    assert len(a.train) == 5 and len(a.evals["validation"]) == 3
    np.testing.assert_array_equal(a.train.input_ids, b.train.input_ids)
    np.testing.assert_array_equal(a.evals["validation"].labels, b.evals["validation"].labels)
    assert sorted(np.bincount(a.evals["validation"].labels)) == [1, 2]  # both classes, not the first rows


# ---- bad input -----------------------------------------------------------------------------------


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope" / "train.json"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_glue_splits(get_task_spec("sst2"), train_file=missing, validation_file=str(missing))
    with pytest.raises(FileNotFoundError, match="no GLUE SST-2 files"):
        load_glue_splits(get_task_spec("sst2"), data_dir=tmp_path)
    folder = tmp_path / "MNLI"
    folder.mkdir()
    write_glue_tsv(folder / "train.tsv", "mnli")
    with pytest.raises(FileNotFoundError, match="dev_matched.tsv"):
        load_glue_splits(get_task_spec("mnli"), data_dir=folder)


def test_train_file_needs_validation_file(tmp_path):
    path = write_named(tmp_path / "a.jsonl", named_records("sst2"))
    with pytest.raises(TaskDataError, match="go together"):
        load_glue_splits(get_task_spec("sst2"), train_file=path)


def test_missing_column(tmp_path):
    path = write_named(tmp_path / "a.jsonl", [{"sentence1": "x", "label": 1}])
    with pytest.raises(TaskDataError, match=r"a\.jsonl, line 1: missing column\(s\) sentence2"):
        load_glue_splits(get_task_spec("rte"), train_file=path, validation_file=str(path))
    path = tmp_path / "train.tsv"
    path.write_text("index\tsentence1\tlabel\n0\tx\tentailment\n")
    with pytest.raises(TaskDataError, match=r"train\.tsv, line 1: missing column\(s\) sentence2"):
        load_glue_splits(get_task_spec("rte"), data_dir=tmp_path)


def test_label_outside_the_set(tmp_path):
    folder = write_glue_dir(tmp_path / "RTE", "rte")
    rows = [*GLUE_ROWS["rte"][1], ("2|a|b|neutral", None, None)]
    write_glue_tsv(folder / "dev.tsv", "rte", rows)
    with pytest.raises(TaskDataError, match=r"dev\.tsv, line 4: label 'neutral'.*0 / entailment, 1 / not_entailment"):
        load_glue_splits(get_task_spec("rte"), data_dir=folder)
    path = write_named(tmp_path / "a.parquet", [{"sentence": "x", "label": 0}, {"sentence": "y", "label": -1}])
    with pytest.raises(TaskDataError, match=r"a\.parquet, row 1: label -1 .*0 / negative, 1 / positive"):
        load_glue_splits(get_task_spec("sst2"), train_file=path, validation_file=str(path))
    path = write_named(tmp_path / "s.csv", [{"sentence1": "x", "sentence2": "y", "label": "7.5"}])
    with pytest.raises(TaskDataError, match=r"s\.csv, line 2: label '7\.5' is not a number in \[0, 5\]"):
        load_glue_splits(get_task_spec("stsb"), train_file=path, validation_file=str(path))


def test_empty_and_malformed_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(TaskDataError, match=r"empty\.jsonl: no examples"):
        load_glue_splits(get_task_spec("sst2"), train_file=empty, validation_file=str(empty))
    folder = tmp_path / "SST-2"
    folder.mkdir()
    (folder / "train.tsv").write_text("sentence\tlabel\n")
    with pytest.raises(TaskDataError, match=r"train\.tsv: no examples"):
        load_glue_splits(get_task_spec("sst2"), data_dir=folder)
    bad = tmp_path / "bad.json"
    bad.write_text('[{"sentence": "x", "label": 1},\n {"sentence": "y" "label": 0}]')
    with pytest.raises(TaskDataError, match=r"bad\.json: malformed JSON at line 2, column 19"):
        load_glue_splits(get_task_spec("sst2"), train_file=bad, validation_file=str(bad))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"sentence": "x", "label": 1}\n{"sentence": "y", label: 0}\n')
    with pytest.raises(TaskDataError, match=r"bad\.jsonl, line 2, column 19: malformed JSON"):
        load_glue_splits(get_task_spec("sst2"), train_file=bad, validation_file=str(bad))
    (folder / "train.tsv").write_text("sentence\tlabel\ngood\t1\nstray\ttab\t0\n")
    with pytest.raises(TaskDataError, match=r"train\.tsv, line 3: 3 tab-separated fields"):
        load_glue_splits(get_task_spec("sst2"), data_dir=folder)


def test_hub_offline_fails_fast_with_a_hint(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"), raising=False)
    for offline in ("1", None):  # the offline switch, then an unreachable endpoint
        if offline:
            monkeypatch.setenv("HF_HUB_OFFLINE", offline)
        else:
            monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
            monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
        started = time.time()
        with pytest.raises(FileNotFoundError, match=r"nyu-mll/glue.*--data-dir.*--train-file/--validation-file"):
            load_glue_splits(get_task_spec("cola"))
        assert time.time() - started < 5


def test_json_variants(tmp_path):
    spec = get_task_spec("sst2")
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"version": 1, "data": named_records("sst2")}))
    lines = write_named(tmp_path / "lines.json", named_records("sst2")[:1])
    lines.write_text(lines.read_text()[1:-1])  # a single JSON object: one line of JSON lines
    train, evals = load_glue_splits(spec, train_file=wrapped, validation_file=str(lines))
    check_split(train, "sst2")
    assert list(evals["validation"].rows["sentence"]) == [GLUE_ROWS["sst2"][1][0][1][0]]
