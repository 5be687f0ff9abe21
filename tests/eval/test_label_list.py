"""The authors' labelled list (OpenSelfSup ImageList: "PATH LABEL" per line, PATH below their data
root, e.g. data/resisc45/meta/train-labeled-1000.txt) as fine-tuning's K images."""

import pytest

from fasthpt.errors import UserError
from fasthpt.eval import common
from fasthpt.eval.finetune import choose_subset, run_finetune
from fasthpt.eval.label_list import list_indices, read_label_list


def _samples(tiny_data):
    manifest = common.resolve_data(tiny_data).manifest
    return {s: manifest.sample_names(s) for s in ("train", "val", "test")}


def _write(tmp_path, lines, name="train-labeled-8.txt"):
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _authors_style(rows, prefix="all/"):
    """Lines as their create-class-data-lists.py writes them: the class folder below a root folder,
    and the label as the index of the class among the sorted class names."""
    classes = sorted({p.split("/")[0] for p, _ in rows})
    return [f"{prefix}{p} {classes.index(p.split('/')[0])}" for p, _ in rows]


def test_an_authors_list_names_its_train_images_in_list_order(tiny_data, tmp_path):
    samples = _samples(tiny_data)
    chosen = [5, 0, 17, 33, 12, 9, 21, 2]
    path = _write(tmp_path, _authors_style([samples["train"][i] for i in chosen]))
    assert list_indices(read_label_list(path), samples).tolist() == chosen
    # the same images named by the whole source path, or with a UC Merced-like prefix: the same indices
    plain = _write(tmp_path, [samples["train"][i][0] for i in chosen], "plain.txt")
    assert list_indices(read_label_list(plain), samples).tolist() == chosen
    deep = _write(tmp_path, _authors_style([samples["train"][i] for i in chosen], "ucm/Images/"), "deep.txt")
    assert list_indices(read_label_list(deep), samples).tolist() == chosen


def test_finetune_on_a_list_records_it(tiny_data, tmp_path):
    samples = _samples(tiny_data)
    path = _write(tmp_path, _authors_style(samples["train"][:8]))
    r = run_finetune("random", tiny_data, arch="resnet_tiny", labels_file=path, iters=1, accum_steps=2,
                     res=32, batch_size=4, workers=0, backend="torch", progress=False, quiet=True)
    assert r["mode"] == "finetune-8" and r["num_train"] == 8
    assert r["options"]["subset"] == "list" and r["options"]["labels_file"] == str(path)
    assert len(r["options"]["labels_file_sha256"]) == 64
    ds = common.resolve_data(tiny_data)
    with pytest.raises(UserError, match="--labels 10 but --labels-file .* lists 8 images"):
        choose_subset(ds, 10, path, 0)
    subset, how = choose_subset(ds, 8, None, 3)  # no file: the stratified draw
    assert len(subset) == 8 and how == {"subset": "stratified", "subset_seed": 3}


@pytest.mark.parametrize("lines, needle", [
    (["all/nowhere/999.jpg 0"], r"1 entries are not images of the train split \(e.g. line 2 all/nowhere/999.jpg\)"),
    (["001.png 0"], r"1 entries name more than one train image .*give more of the path"),
    ([], "lists no images"),
])
def test_bad_entries_are_one_line_errors(tiny_data, tmp_path, lines, needle):
    path = _write(tmp_path, ["# a comment", *lines])
    with pytest.raises(UserError, match=needle) as info:
        list_indices(read_label_list(path), _samples(tiny_data))
    assert len(str(info.value).splitlines()) == 1 and str(path) in str(info.value)


def test_a_val_image_twice_listed_images_and_wrong_labels_are_refused(tiny_data, tmp_path):
    samples = _samples(tiny_data)
    train, val = samples["train"], samples["val"]
    in_val = _write(tmp_path, _authors_style(train[:3]) + [f"all/{val[0][0]} 0"], "v.txt")
    with pytest.raises(UserError, match=rf"line 4 all/{val[0][0]} \(in val\)"):
        list_indices(read_label_list(in_val), samples)
    twice = _write(tmp_path, _authors_style(train[:3] + train[:1]), "t.txt")
    with pytest.raises(UserError, match=r"1 images are listed more than once \(e.g. line 4 .* \(also line 1\)\)"):
        list_indices(read_label_list(twice), samples)
    a, b = next(r for r in train if r[1] == 0), next(r for r in train if r[1] == 1)
    same_label = _write(tmp_path, [f"{a[0]} 7", f"{b[0]} 7"], "l.txt")  # two classes under one label
    with pytest.raises(UserError, match="labels do not follow the data's classes"):
        list_indices(read_label_list(same_label), samples)
    renumbered = _write(tmp_path, [f"{a[0]} 7", f"{b[0]} 3"], "r.txt")  # another numbering, one to one: fine
    assert list_indices(read_label_list(renumbered), samples).tolist() == [train.index(a), train.index(b)]


def test_missing_and_binary_files(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        read_label_list(tmp_path / "nope.txt")
    binary = tmp_path / "b.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(UserError, match="not a UTF-8 text file"):
        read_label_list(binary)
