"""CSV/TSV sources described by a schema: each schema feature and each user error, on small
fixtures written here."""

from pathlib import Path
from typing import List

import numpy as np
import pytest

from ctr.data.rows import BAG_PAD, rows_to_batch
from ctr.data.schema import DenseConfig, JoinConfig, LabelConfig, SchemaConfig, SparseConfig, SplitConfig
from ctr.data.shards import ShardSource
from ctr.data.tabular import CsvFormatError, csv_shards, hash_ids, preprocess_csv

HEADER = "user,movie,rating,ts,count,genres,g1,g2,g3"


def _lines(n: int, seed: int = 0) -> List[str]:
    """Rows of a ratings log: user, movie, rating 1-5, timestamp, a count, genres a|b and as 3 columns."""
    rng = np.random.default_rng(seed)
    genres = ["Action", "Comedy", "Drama", "Horror"]
    rows = []
    for i in range(n):
        picked = list(rng.choice(genres, size=int(rng.integers(0, 4)), replace=False))
        cols = picked + [""] * (3 - len(picked))
        rows.append(f"u{rng.integers(0, 20)},m{rng.integers(0, 30)},{rng.integers(1, 6)},{1000 + int(rng.integers(0, 10**6))},"
                    f"{rng.integers(0, 100)},{'|'.join(picked)},{','.join(cols)}")
    return rows


def _write(path: Path, lines: List[str], header: str = HEADER, encoding: str = "utf-8") -> Path:
    path.write_bytes(("\n".join(([header] if header else []) + lines) + "\n").encode(encoding))
    return path


def _schema(root: Path, **changes) -> SchemaConfig:
    base = dict(
        root=str(root), files=["ratings.csv"],
        label=LabelConfig(column="rating", threshold=4),
        dense=[DenseConfig(column="count", log1p=True, normalize="standardize")],
        sparse=[SparseConfig(name="user", columns=["user"]), SparseConfig(name="movie", columns=["movie"])],
        split=SplitConfig(by="ratio", test_ratio=0.2, seed=3),
    )
    base.update(changes)
    return SchemaConfig(**base)


def _run(tmp_path: Path, schema: SchemaConfig, **options) -> dict:
    return preprocess_csv(schema, str(tmp_path / "out"), progress_bar=False, **options)


def _source(tmp_path: Path) -> ShardSource:
    return ShardSource(str(tmp_path / "out"), split_by="preprocessed", shuffle_buffer=0)


def test_string_ids_are_a_documented_stable_hash():
    # splitmix64(blake2b-64("genre\x1fAction")) >> 1; must never change, or every model's ids move.
    assert hash_ids("genre", ["Action"]).tolist() == [6255414212983130977]
    assert hash_ids("genre", ["Action"])[0] != hash_ids("movie", ["Action"])[0]


def test_label_dense_and_single_ids(tmp_path):
    _write(tmp_path / "ratings.csv", _lines(300))
    meta = _run(tmp_path, _schema(tmp_path))
    assert meta["num_rows"] == 300 and meta["sparse"] == ["user", "movie"] and meta["bags"] == []
    source = _source(tmp_path)
    rows = source.rows("train", 0, source.num_rows("train"))
    # Standardised with the train rows' statistics, applied on read.
    assert abs(rows.dense[:, 0].mean()) < 1e-4 and rows.dense[:, 0].std() == pytest.approx(1, abs=1e-3)
    assert set(np.unique(rows.labels)) == {0.0, 1.0}
    assert set(rows.ids[:, 0]) <= set(hash_ids("user", [f"u{i}" for i in range(20)]))


def test_bag_from_columns_drops_empty_members(tmp_path):
    _write(tmp_path / "ratings.csv", ["u1,m1,5,1,1,,Action,,Drama", "u2,m2,1,2,1,,,,", "u3,m3,4,3,1,,Comedy,Horror,Action"])
    schema = _schema(tmp_path, sparse=[SparseConfig(name="genres", columns=["g1", "g2", "g3"])],
                     split=SplitConfig(by="ratio", test_ratio=0.0))
    meta = _run(tmp_path, schema)
    assert meta["bags"] == ["genres"] and meta["bag_lengths"] == {"genres": 3}
    rows = _source(tmp_path).rows("train", 0, 3)
    expected = [hash_ids("genres", ["Action", "Drama"]).tolist(), [], hash_ids("genres", ["Comedy", "Horror", "Action"]).tolist()]
    assert [[i for i in row if i != BAG_PAD] for row in rows.bags["genres"].tolist()] == expected
    kjt = rows_to_batch(rows, ["genres"]).sparse_features
    assert kjt["genres"].lengths().tolist() == [2, 0, 3]


def test_bag_from_a_delimited_column_truncates_to_max_length(tmp_path):
    _write(tmp_path / "ratings.csv", ["u1,m1,5,1,1,Action||Drama,,,", "u2,m2,1,2,1,Comedy|Horror|Action,,,"])
    schema = _schema(tmp_path, sparse=[SparseConfig(name="genres", columns=["genres"], delimiter="|", max_length=2)],
                     split=SplitConfig(by="ratio", test_ratio=0.0))
    meta = _run(tmp_path, schema)
    assert meta["stats"]["bags_truncated"] == {"genres": 1}
    rows = _source(tmp_path).rows("train", 0, 2)
    assert rows.bags["genres"].tolist() == [hash_ids("genres", ["Action", "Drama"]).tolist(),
                                            hash_ids("genres", ["Comedy", "Horror"]).tolist()]


def test_flag_columns_and_bucketised_numbers(tmp_path):
    _write(tmp_path / "ratings.csv", ["u1,m1,5,1,3,,1,0,1", "u2,m2,1,2,70,,0,0,0"])
    schema = _schema(tmp_path, sparse=[SparseConfig(name="flags", columns=["g1", "g2", "g3"], flags=True),
                                       SparseConfig(name="count_bucket", columns=["count"], boundaries=[10, 50])],
                     split=SplitConfig(by="ratio", test_ratio=0.0))
    _run(tmp_path, schema)
    rows = _source(tmp_path).rows("train", 0, 2)
    assert rows.bags["flags"][0].tolist() == hash_ids("flags", ["g1", "g3"]).tolist() + [BAG_PAD]
    assert rows.ids[:, 0].tolist() == hash_ids("count_bucket", ["bucket 0", "bucket 2"]).tolist()


def test_shared_vocabulary_gives_one_id_space_and_one_table(tmp_path):
    from ctr.features.hashing import feature_table_sizes
    from ctr.features.tables import embedding_bag_configs

    _write(tmp_path / "ratings.csv", ["u1,m1,5,1,1,Action|Drama,Action,,", "u2,m2,1,2,1,Comedy,Drama,Comedy,"])
    schema = _schema(tmp_path, sparse=[SparseConfig(name="user", columns=["user"]),
                                       SparseConfig(name="movieGenres", columns=["genres"], delimiter="|", max_length=3, table="genre"),
                                       SparseConfig(name="userGenres", columns=["g1", "g2", "g3"], table="genre")],
                     split=SplitConfig(by="ratio", test_ratio=0.0))
    meta = _run(tmp_path, schema)
    assert meta["shared_tables"] == {"genre": ["movieGenres", "userGenres"]}
    source = _source(tmp_path)
    rows = source.rows("train", 0, 2)
    assert rows.bags["movieGenres"][0, 0] == rows.bags["userGenres"][0, 0] == hash_ids("genre", ["Action"])[0]
    sizes = feature_table_sizes(source.sparse_names, 100, {"genre": 7}, source.shared_tables)
    assert sizes == {"user": 100, "movieGenres": 7, "userGenres": 7}
    configs = embedding_bag_configs({f: {f: n} for f, n in sizes.items()}, dict.fromkeys(sizes, 8), "fp32", source.shared_tables)
    assert [(c.name, c.feature_names, c.num_embeddings) for c in configs] == [
        ("t_user", ["user"], 100), ("t_genre", ["movieGenres", "userGenres"], 7)]


def test_side_table_join_counts_missing_keys_and_fails_past_the_fraction(tmp_path):
    _write(tmp_path / "ratings.csv", _lines(100))
    # Users u0..u14 have attributes; u15..u19 do not.
    (tmp_path / "users.psv").write_text("".join(f"u{i}|{20 + i}|{'MF'[i % 2]}\n" for i in range(15)))
    join = JoinConfig(path="users.psv", key="id", join_column="user", delimiter="|", header=False,
                      columns=["id", "age", "gender"], max_unmatched_fraction=0.5)
    schema = _schema(tmp_path, joins=[join], dense=[DenseConfig(column="age", fill=-1.0)],
                     sparse=[SparseConfig(name="gender", columns=["gender"])])
    meta = _run(tmp_path, schema)
    unmatched = meta["joins"][0]["unmatched_rows"]
    assert 0 < unmatched < 50
    source = _source(tmp_path)
    rows = source.rows("train", 0, source.num_rows("train"))
    assert (rows.dense[:, 0] == -1).sum() > 0 and set(rows.dense[rows.dense[:, 0] != -1, 0]) <= set(range(20, 35))
    join.max_unmatched_fraction = 0.01
    with pytest.raises(CsvFormatError, match=r"users\.psv: \d+ of 100 rows .*joins\[0\]\.max_unmatched_fraction=0\.01"):
        _run(tmp_path, schema, overwrite=True)


def test_timestamp_split_puts_test_after_train(tmp_path):
    _write(tmp_path / "ratings.csv", _lines(500))
    schema = _schema(tmp_path, split=SplitConfig(by="timestamp", timestamp_column="ts", test_ratio=0.25, val_ratio=0.1))
    schema.dense = [DenseConfig(column="ts")]
    meta = _run(tmp_path, schema)
    source = _source(tmp_path)
    stamps = {s: source.rows(s, 0, source.num_rows(s)).dense[:, 0] for s in ("train", "val", "test")}
    assert max(stamps["train"].max(), stamps["val"].max()) < stamps["test"].min()
    assert source.num_rows("test") == pytest.approx(125, abs=3) and 25 < source.num_rows("val") < 60
    assert meta["timestamp_cutoff"] == stamps["test"].min()


def test_ratio_split_is_seeded(tmp_path):
    _write(tmp_path / "ratings.csv", _lines(1000))
    first = _run(tmp_path, _schema(tmp_path))["splits"]
    assert 150 < first["test"]["rows"] < 250 and first["val"]["rows"] == 0
    assert _run(tmp_path, _schema(tmp_path), overwrite=True)["splits"] == first
    other = _schema(tmp_path, split=SplitConfig(by="ratio", test_ratio=0.2, seed=4))
    assert _run(tmp_path, other, overwrite=True)["splits"] != first


def test_split_by_files_drops_test_rows_seen_in_training(tmp_path):
    train = _lines(200, seed=1)
    _write(tmp_path / "ratings.csv", train)
    _write(tmp_path / "test.csv", train[:30] + _lines(70, seed=2))
    schema = _schema(tmp_path, test_files=["test.csv"],
                     split=SplitConfig(by="files", val_ratio=0.1, dedup_key=["user", "movie", "ts"]))
    meta = _run(tmp_path, schema)
    assert meta["test_rows_deduplicated"] == 30 and meta["splits"]["test"]["rows"] == 70
    assert meta["splits"]["train"]["rows"] + meta["splits"]["val"]["rows"] == 200


def test_a_column_missing_from_the_header_names_file_and_setting(tmp_path):
    _write(tmp_path / "ratings.csv", _lines(10))
    schema = _schema(tmp_path, sparse=[SparseConfig(name="x", columns=["user", "nope"])])
    with pytest.raises(CsvFormatError, match=r"ratings\.csv: data\.schema\.sparse\[0\]\.columns names column 'nope'"):
        _run(tmp_path, schema)
    assert not (tmp_path / "out").exists()


def test_a_non_numeric_dense_value_follows_the_bad_row_policy(tmp_path):
    _write(tmp_path / "ratings.csv", _lines(10) + ["u1,m1,5,1,lots,,,,"] + _lines(5, seed=1))
    with pytest.raises(CsvFormatError, match=r"ratings\.csv:12: dense column count is 'lots', not a number"):
        _run(tmp_path, _schema(tmp_path))
    meta = _run(tmp_path, _schema(tmp_path), on_bad_row="skip", overwrite=True)
    assert meta["num_rows"] == 15 and meta["bad_rows"]["by_kind"] == {"value": 1}
    assert meta["bad_rows"]["examples"][0].endswith("ratings.csv:12: dense column count is 'lots', not a number")


def test_an_encoding_error_names_file_line_and_setting(tmp_path):
    _write(tmp_path / "ratings.csv", _lines(30) + ["u1,Mos\xe9,5,1,1,,,,"], encoding="latin-1")
    with pytest.raises(CsvFormatError, match=r"ratings\.csv:32: not valid utf-8 \(data\.schema\.encoding='utf-8'\)"):
        _run(tmp_path, _schema(tmp_path))
    assert _run(tmp_path, _schema(tmp_path, encoding="latin-1"), overwrite=True)["num_rows"] == 31


def test_a_label_rule_with_one_class_is_refused(tmp_path):
    _write(tmp_path / "ratings.csv", _lines(50))
    with pytest.raises(CsvFormatError, match=r"data\.schema\.label \(column='rating', threshold=9\.0\) makes every one"):
        _run(tmp_path, _schema(tmp_path, label=LabelConfig(column="rating", threshold=9.0)))


def test_training_refuses_shards_of_another_schema(tmp_path):
    _write(tmp_path / "ratings.csv", _lines(50))
    _run(tmp_path, _schema(tmp_path))
    assert csv_shards(str(tmp_path / "out"), _schema(tmp_path)).num_rows("test") > 0
    with pytest.raises(CsvFormatError, match="not written from this data.schema"):
        csv_shards(str(tmp_path / "out"), _schema(tmp_path, label=LabelConfig(column="rating", threshold=3)))


def test_nan_and_inf_in_a_dense_column_or_the_label_are_bad_rows(tmp_path):
    """One nan made the normalisation statistics, and then every training loss, nan."""
    bad = ["u1,m1,5,1,nan,,,,", "u1,m1,5,1,inf,,,,", "u1,m1,NaN,1,3,,,,", "u1,m1,5,1,-Infinity,,,,"]
    _write(tmp_path / "ratings.csv", _lines(10) + bad + _lines(5, seed=1))
    with pytest.raises(CsvFormatError, match=r"ratings\.csv:12: dense column count is 'nan', not a finite number"):
        _run(tmp_path, _schema(tmp_path))
    meta = _run(tmp_path, _schema(tmp_path), on_bad_row="skip", overwrite=True)
    assert meta["num_rows"] == 15 and meta["bad_rows"]["by_kind"] == {"value": 4}
    assert "label column rating is 'NaN', not a finite number" in meta["bad_rows"]["examples"][2]
    assert all(np.isfinite(meta["dense_transform"][key]).all() for key in ("shift", "scale"))


def test_an_unbalanced_quote_is_one_bad_row_named_at_its_line(tmp_path):
    """The quote once swallowed the rest of the file: blamed on its last line, 48 of 3000 rows kept, 1 counted."""
    lines = _lines(3000)
    lines[49] = lines[49].replace(",m", ',"m', 1)
    _write(tmp_path / "ratings.csv", lines)
    with pytest.raises(CsvFormatError, match=r"ratings\.csv:51: a quote opened on this line is not closed"):
        _run(tmp_path, _schema(tmp_path))
    meta = _run(tmp_path, _schema(tmp_path), on_bad_row="skip", overwrite=True)
    assert meta["num_rows"] == 2999 and meta["bad_rows"]["by_kind"] == {"unbalanced quote": 1}
    assert meta["bad_rows"]["examples"][0].split(": ")[0].endswith("ratings.csv:51")


def test_a_quoted_field_spanning_lines_is_still_one_record(tmp_path):
    lines = _lines(20)
    lines[5] = 'u1,"m\n1",5,1000,3,,,,'
    _write(tmp_path / "ratings.csv", lines)
    assert _run(tmp_path, _schema(tmp_path))["num_rows"] == 20


@pytest.mark.parametrize("changes,key", [
    ({"sparse": [SparseConfig(name="genres", columns=["genres"], delimiter="|", max_length=-1)]},
     r"sparse\[0\]\.max_length=-1"),
    ({"sparse": [SparseConfig(name="genres", columns=["genres"], delimiter="")]}, r"sparse\[0\]\.delimiter=''"),
    ({"delimiter": ""}, r"data\.schema\.delimiter=''"),
    ({"encoding": "utf-99"}, r"data\.schema\.encoding='utf-99' is not an encoding"),
    ({"sparse": [SparseConfig(name="a/b", columns=["user"])]}, r"sparse\[0\]\.name='a/b'"),
    ({"dense": [DenseConfig(column="count", fill=float("nan"))]}, r"dense\[0\]\.fill=nan"),
])
def test_schema_values_that_would_crash_late_are_refused_when_it_is_loaded(tmp_path, changes, key):
    # No data file and no shards: the schema is refused before either would be looked for.
    with pytest.raises(ValueError, match=key):
        _run(tmp_path, _schema(tmp_path, **changes))
    with pytest.raises(ValueError, match=key):
        csv_shards(str(tmp_path / "out"), _schema(tmp_path, **changes))


def test_a_huge_field_is_one_bad_row_quoted_capped(tmp_path):
    """One 20 MB line once made a 21 MB meta.json."""
    huge = ["u1,m1,5,1," + "9" * 100_000 + "x,,,,", "u1,m1,5,1," + "9" * 1_000_000 + ",,,,"]
    _write(tmp_path / "ratings.csv", _lines(10) + huge + _lines(5, seed=1))
    with pytest.raises(CsvFormatError, match="characters in all") as error:
        _run(tmp_path, _schema(tmp_path))
    assert len(str(error.value)) < 2000
    meta = _run(tmp_path, _schema(tmp_path), on_bad_row="skip", overwrite=True)
    assert meta["num_rows"] == 15 and meta["bad_rows"]["by_kind"] == {"value": 1, "unparseable": 1}
    assert "ratings.csv:13: unparseable line (field larger than field limit" in meta["bad_rows"]["examples"][1]
    assert (tmp_path / "out" / "meta.json").stat().st_size < 100_000
