"""Writes the offline movie-review sentences as your own data would look: csv files with a text column and
string labels, for trying ``--train-file`` / ``--validation-file`` and ``python -m jax_adalora.predict``.

    python examples/movie_csv.py data/movies
    # data/movies/train.csv (9,512 rows), data/movies/dev.csv (1,056 rows): text,label (negative / positive)

The rows and their split are the built-in ``movie-sentiment`` task's (the same seeded 90/10 split), so a run
on these files with the built-in run's settings reaches the built-in run's dev accuracy. Existing files are
left alone.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from jax_adalora.tasks import get_task_spec
from jax_adalora.tasks.movie import load_movie_splits


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Write the movie-review sentences as train.csv and dev.csv.")
    parser.add_argument("directory", help="where to write train.csv and dev.csv")
    args = parser.parse_args(argv)
    directory = Path(args.directory)
    targets = {"train": directory / "train.csv", "validation": directory / "dev.csv"}
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing:
        print(f"error: {', '.join(existing)} already exist(s); choose another directory", file=sys.stderr)
        return 2
    spec = get_task_spec("movie-sentiment")
    train, evals = load_movie_splits(spec)
    directory.mkdir(parents=True, exist_ok=True)
    for split, texts in (("train", train), ("validation", evals["validation"])):
        with open(targets[split], "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            labels = (spec.label_names[i] for i in texts.labels)
            writer.writerows(zip(texts.rows["sentence"], labels, strict=True))
        print(f"{targets[split]}: {len(texts):,} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
