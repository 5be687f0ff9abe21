"""fasthpt.manifest: the one reader and writer of manifest.json. A malformed field is one line that
names it; the typed accessors give what the loaders and evaluators read."""

from __future__ import annotations

import json

import pytest

from fasthpt.errors import UserError
from fasthpt.manifest import MANIFEST, SCHEMA_VERSION, Split, load_manifest, write_manifest


def _raw(**changes) -> dict:
    raw = {"schema": SCHEMA_VERSION, "name": "m", "classes": ["a", "b"],
           "splits": {"train": {"count": 5, "per_class": [2, 3]}, "val": {"count": 2, "per_class": [1, 1]}},
           "mean": [120.0, 110, 100.5], "std": [50, 51, 52.5], "formats": ["wds"],
           "files": {"wds": {"train": ["wds/train-000000.tar"], "val": ["wds/val-000000.tar"]},
                     "samples": {"train": "samples/train.jsonl"}},
           "settings": {"test_frac": 0.0}}
    raw.update(changes)
    return raw


def test_written_manifest_reads_back_through_typed_accessors(tmp_path):
    write_manifest(tmp_path, _raw())
    m = load_manifest(tmp_path)
    assert (m.name, m.classes, m.num_classes, m.schema, m.formats) == ("m", ["a", "b"], 2, SCHEMA_VERSION, ["wds"])
    assert m.split_names == ["train", "val"] and m.split("train") == Split(5, (2, 3))
    assert m.count("val") == 2 and m.per_class("train") == [2, 3] and m.mean == [120.0, 110.0, 100.5]
    assert m.wds_shards("val") == [tmp_path / "wds" / "val-000000.tar"]
    assert m.samples_path("train") == tmp_path / "samples" / "train.jsonl"
    assert m.settings == {"test_frac": 0.0}


@pytest.mark.parametrize("changes, named", [
    ({"classes": "a,b"}, "'classes' missing or not a JSON list"),
    ({"mean": [1, 2]}, "'mean' is not 3 numbers (one per band)"),
    ({"splits": {"train": {"count": -1}}}, "splits.train.count"),
    ({"splits": {"train": {"count": 5, "per_class": [5]}}}, "splits.train.per_class is not one count per class"),
    ({"files": []}, "'files' is not a JSON dict"),
    ({"splits": {"train": {"count": 5, "per_class": [2, 2]}}}, "splits.train.per_class adds up to 4, not its count 5"),
])
def test_a_malformed_field_is_one_line_naming_it(tmp_path, changes, named):
    (tmp_path / MANIFEST).write_text(json.dumps(_raw(**changes)))
    with pytest.raises(UserError) as err:
        load_manifest(tmp_path)
    assert named in str(err.value) and "\n" not in str(err.value) and "re-run `fasthpt prep" in str(err.value)
    with pytest.raises(ValueError, match=named.split(" ")[0]):
        write_manifest(tmp_path / "new", _raw(**changes))  # the writer refuses what the readers would
    assert not (tmp_path / "new").exists()


def test_missing_pieces_say_what_to_rerun(tmp_path):
    splits = {"train": {"count": 5}}
    write_manifest(tmp_path, _raw(splits=splits, files={}))
    m = load_manifest(tmp_path)
    with pytest.raises(UserError, match=r"lacks splits\.train\.per_class; re-run `fasthpt prep`"):
        m.per_class("train")
    with pytest.raises(UserError, match=r"no samples/train\.jsonl .* `fasthpt prep --force`"):
        m.samples_path("train")
    with pytest.raises(UserError, match=r"has no test split \(prepared with --test-frac 0\)"):
        m.count("test")
    (tmp_path / MANIFEST).write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(UserError, match="is not valid JSON"):
        load_manifest(tmp_path)


def test_sample_names_read_the_samples_list_or_say_to_rebuild_it(tmp_path):
    write_manifest(tmp_path, _raw())
    (tmp_path / "samples").mkdir()
    rows = [{"path": "a/1.jpg", "label": 0}, {"path": "b/\u00e9t\u00e9.png", "label": 1},
            {"path": "b/x?", "path_b64": "Yi94/w==", "label": 1}]  # a name that is not UTF-8: its display form
    (tmp_path / "samples" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_manifest(tmp_path).sample_names("train") == [("a/1.jpg", 0), ("b/\u00e9t\u00e9.png", 1), ("b/x?", 1)]
    (tmp_path / "samples" / "train.jsonl").write_text('{"path": "a/1.jpg"}\n')
    with pytest.raises(UserError, match="train.jsonl is unreadable .*fasthpt prep --force"):
        load_manifest(tmp_path).sample_names("train")


@pytest.mark.parametrize("schema", [SCHEMA_VERSION + 1, SCHEMA_VERSION + 100, 2**62])
def test_a_manifest_from_a_newer_fasthpt_is_refused_naming_both_versions(tmp_path, schema):
    (tmp_path / MANIFEST).write_text(json.dumps(_raw(schema=schema)))
    with pytest.raises(UserError) as err:
        load_manifest(tmp_path)
    text = str(err.value)
    assert f"schema {schema}" in text and f"up to {SCHEMA_VERSION}" in text and "\n" not in text


@pytest.mark.parametrize("schema", ["3", 3.0, True, 0, -1, [3]])
def test_a_schema_that_is_not_a_version_number_is_refused(tmp_path, schema):
    (tmp_path / MANIFEST).write_text(json.dumps(_raw(schema=schema)))
    with pytest.raises(UserError, match="'schema' is not a version number"):
        load_manifest(tmp_path)


@pytest.mark.parametrize("schema", [None, 1, SCHEMA_VERSION])
def test_older_and_current_schemas_still_read(tmp_path, schema):
    raw = _raw(schema=schema)
    if schema is None:
        del raw["schema"]
    (tmp_path / MANIFEST).write_text(json.dumps(raw))
    assert load_manifest(tmp_path).schema == schema
