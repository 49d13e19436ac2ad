"""Derived columns (prefix, substring, date part, cross) and `other_columns: categorical`, on small fixtures."""

from pathlib import Path

import numpy as np
import pytest

from ctr.data.schema import DenseConfig, DerivedConfig, LabelConfig, SchemaConfig, SparseConfig, SplitConfig
from ctr.data.tabular import CsvFormatError, hash_ids, preprocess_csv
from tests.data.test_tabular import _source, _write

USERS = ["u1,94110,12-Jan-1995,5", "u2,10001,01-Mar-2001,1", "u3,94703,,4", "u4,30301,30-Dec-1999,2"]


def _run(tmp_path: Path, **schema) -> dict:
    _write(tmp_path / "rows.csv", USERS, header="user,zip,released,rating")
    base = dict(root=str(tmp_path), files=["rows.csv"], label=LabelConfig(column="rating", threshold=4),
                split=SplitConfig(by="ratio", test_ratio=0.0))
    return preprocess_csv(SchemaConfig(**{**base, **schema}), str(tmp_path / "out"), progress_bar=False)


def _train(tmp_path: Path):
    source = _source(tmp_path)
    return source, source.rows("train", 0, source.num_rows("train"))


def test_prefix_date_part_and_cross_are_computed_while_reading(tmp_path):
    derived = [DerivedConfig(name="zip3", column="zip", prefix=3),
               DerivedConfig(name="zip_tail", column="zip", substring=[3, 5]),
               DerivedConfig(name="year", column="released", date_format="%d-%b-%Y", date_part="year"),
               DerivedConfig(name="user_x_zip3", cross=["user", "zip"])]
    meta = _run(tmp_path, derived=derived, dense=[DenseConfig(column="year")],
                sparse=[SparseConfig(name=n, columns=[n]) for n in ("zip3", "zip_tail", "user_x_zip3")])
    assert meta["sparse"] == ["zip3", "zip_tail", "user_x_zip3"]
    source, rows = _train(tmp_path)
    assert rows.dense[:, 0].tolist() == [1995, 2001, 0, 1999]  # an empty date is empty, filled with 0
    assert rows.ids[:, 0].tolist() == hash_ids("zip3", ["941", "100", "947", "303"]).tolist()
    assert rows.ids[:, 1].tolist() == hash_ids("zip_tail", ["10", "01", "03", "01"]).tolist()
    assert rows.ids[:, 2].tolist() == hash_ids("user_x_zip3", [f"{u}\x1f{z}" for u, z in
                                                               [("u1", "94110"), ("u2", "10001"), ("u3", "94703"),
                                                                ("u4", "30301")]]).tolist()


def test_a_date_in_another_format_follows_the_bad_row_policy(tmp_path):
    derived = [DerivedConfig(name="year", column="released", date_format="%Y-%m-%d", date_part="year")]
    with pytest.raises(CsvFormatError, match=r"rows.csv:2: column released is '12-Jan-1995', not a date in "
                                             r"data.schema.derived\[0\].date_format='%Y-%m-%d'"):
        _run(tmp_path, derived=derived, dense=[DenseConfig(column="year")])


def test_a_derived_rule_must_be_exactly_one(tmp_path):
    with pytest.raises(CsvFormatError, match=r"derived\[0\] \(z\): give exactly one of prefix"):
        _run(tmp_path, derived=[DerivedConfig(name="z", column="zip", prefix=3, substring=[0, 2])])
    with pytest.raises(CsvFormatError, match="names column 'nope'"):
        _run(tmp_path, derived=[DerivedConfig(name="z", column="nope", prefix=3)])


AVAZU = ("id,click,hour,C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,app_category,device_id,"
         "device_ip,device_model,device_type,device_conn_type,C14,C15,C16,C17,C18,C19,C20,C21").split(",")


def test_an_avazu_like_file_needs_five_schema_lines(tmp_path):
    # 24 columns, `hour` one value for every row (no usable timestamp): split in file order.
    rng = np.random.default_rng(0)
    lines = [",".join([str(i), str(int(rng.random() < 0.3)), "14102100"] +
                      [f"{c}{rng.integers(0, 6)}" for c in AVAZU[3:]]) for i in range(100)]
    _write(tmp_path / "avazu.csv", lines, header=",".join(AVAZU))
    schema = SchemaConfig(root=str(tmp_path), files=["avazu.csv"],
                          label=LabelConfig(column="click"),
                          ignore=["id", "hour"],
                          other_columns="categorical",
                          split=SplitConfig(by="order", test_ratio=0.2, val_ratio=0.1, val_by="order"))
    meta = preprocess_csv(schema, str(tmp_path / "out"), progress_bar=False)
    assert meta["dense"] == [] and meta["sparse"] == AVAZU[3:]
    assert {s: c["rows"] for s, c in meta["splits"].items()} == {"train": 72, "val": 8, "test": 20}
    source = _source(tmp_path)
    first_test = source.rows("test", 0, 1).ids[0, AVAZU[3:].index("C1")]
    assert first_test == hash_ids("C1", [lines[80].split(",")[3]])[0]  # test starts at row 80 of the file


def test_other_columns_skip_the_named_ones(tmp_path):
    meta = _run(tmp_path, other_columns="categorical", dense=[DenseConfig(column="rating")],
                derived=[DerivedConfig(name="zip3", column="zip", prefix=3)], ignore=["zip"],
                label=LabelConfig(column="rating", threshold=4))
    assert meta["dense"] == ["rating"] and meta["sparse"] == ["user", "released", "zip3"]


def test_ignore_names_a_column_that_exists(tmp_path):
    with pytest.raises(CsvFormatError, match=r"data.schema.ignore names column 'nope'"):
        _run(tmp_path, ignore=["nope"], other_columns="categorical")
