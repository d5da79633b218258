"""Reading task files through ``datasets``: encodings (UTF-8 with a byte-order mark, other bytes), where a row
is in its file, and the eval sample."""

import numpy as np
import pytest

from jax_adalora.tasks.data_files import read_file
from jax_adalora.tasks.glue import read_glue_tsv_split
from jax_adalora.tasks.labelled_texts import read_named_split, row_locator
from jax_adalora.tasks.registry import get_task_spec
from jax_adalora.tasks.sources import TaskDataError
from jax_adalora.tasks.task_data import eval_rows


@pytest.mark.parametrize("suffix, text", [(".csv", "sentence,label\na fine film,1\n"), (".jsonl", '{"label": 1}\n')])
def test_utf8_with_a_byte_order_mark_is_read_as_excel_writes_it(tmp_path, suffix, text):
    path = tmp_path / f"train{suffix}"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    rows = read_file(path, cache_dir=tmp_path / "cache", as_text=True)
    assert rows.column_names == (["sentence", "label"] if suffix == ".csv" else ["label"])
    assert rows[0]["label"] in ("1", 1)
    assert row_locator(path)(0) == (f"{path}, line 2" if suffix == ".csv" else f"{path}, line 1")


def test_bytes_that_are_not_utf8_name_the_file_and_line(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_bytes("sentence\tlabel\nfine\t1\nd\xe9j\xe0 vu\t0\n".encode("latin-1"))
    with pytest.raises(TaskDataError, match=rf"{path}, line 3, column 2: byte 0xe9 is not UTF-8"):
        read_glue_tsv_split(get_task_spec("sst2"), path, cache_dir=tmp_path / "cache")
    as_csv = path.rename(tmp_path / "dev.csv")
    with pytest.raises(TaskDataError, match=rf"{as_csv}, line 3, column 2"):
        read_named_split(get_task_spec("sst2"), as_csv, cache_dir=tmp_path / "cache")
    with pytest.raises(TaskDataError, match=rf"{as_csv}, line 3, column 2"):
        read_file(as_csv, cache_dir=tmp_path / "cache")  # typed by pandas, as own data is read


def test_a_truncated_eval_split_is_a_fixed_stratified_sample():
    labels = np.array([0] * 90 + [1] * 10)  # in id order, the first rows are all one class
    rows = eval_rows(100, 20, labels)
    assert np.all(np.diff(rows) > 0) and len(rows) == 20
    assert np.bincount(labels[rows]).tolist() == [18, 2]  # each class keeps its share
    np.testing.assert_array_equal(rows, eval_rows(100, 20, labels))  # whatever the run's seed
    three = np.array([0] * 70 + [1] * 20 + [2] * 10)
    assert np.bincount(three[eval_rows(100, 9, three)]).tolist() == [6, 2, 1]  # 6.3, 1.8, 0.9: largest remainders
    assert len(set(eval_rows(100, 10))) == 10  # no labels (QA): a plain sample
    np.testing.assert_array_equal(eval_rows(100, 0, labels), np.arange(100))
