"""The public loader interface: backend discovery and choice, argument checks, dispatch."""

from __future__ import annotations

import dataclasses
import itertools
import subprocess
import sys

import pytest
import torch

import fasthpt.data as data_api
from fasthpt.data import common
from fasthpt.device import resolve_device
from fasthpt.errors import UserError
from fasthpt.manifest import load_manifest


def test_import_is_cheap():
    code = "import sys, fasthpt.data; print(sorted(m for m in ('torch', 'nvidia.dali', 'ffcv') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_available_backends_reports_reasons():
    avail = data_api.available_backends()
    assert set(avail) == {"ffcv", "dali", "torch"}
    assert avail["torch"] is None
    assert all(v is None or (isinstance(v, str) and v) for v in avail.values())


def test_missing_backend_names_what_to_install(monkeypatch):
    monkeypatch.setitem(data_api._MODULES, "dali", "fasthpt_no_such_module.dali_backend")
    reason = data_api.available_backends()["dali"]
    assert "not built" in reason
    monkeypatch.setitem(data_api._MODULES, "dali", "tests_missing_dep_backend")
    with pytest.raises(UserError, match="dali"):
        data_api.resolve_backend("dali")


def test_missing_dependency_is_reported_with_install_hint(monkeypatch, tmp_path):
    (tmp_path / "fake_backend.py").write_text("import some_missing_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(data_api._MODULES, "dali", "fake_backend")
    reason = data_api.available_backends()["dali"]
    assert "some_missing_dependency_xyz" in reason and "pip install" in reason


def test_auto_prefers_fastest_available(tiny_data, monkeypatch):
    manifest = load_manifest(tiny_data)
    monkeypatch.setattr(data_api, "_import_reason", lambda name: None)
    assert data_api.resolve_backend("auto", manifest) == "ffcv"
    wds_only = dataclasses.replace(manifest, raw={**manifest.raw, "formats": ["wds"]})
    assert data_api.resolve_backend("auto", wds_only) == "dali"
    monkeypatch.setattr(data_api, "_import_reason", lambda name: None if name == "torch" else "not installed")
    assert data_api.resolve_backend("auto", manifest) == "torch"
    none = dataclasses.replace(manifest, raw={**manifest.raw, "formats": []})
    with pytest.raises(UserError, match="no loader backend"):
        data_api.resolve_backend("auto", none)


def test_unknown_backend():
    with pytest.raises(UserError, match="valid: auto, ffcv, dali, torch"):
        data_api.resolve_backend("tf")


@pytest.mark.parametrize("kw, match", [
    (dict(res=0), "res"), (dict(batch_size=0), "batch_size"), (dict(workers=-1), "workers"),
    (dict(split="unlabeled"), "no split"), (dict(batch_size=100), "fewer than batch_size"),
    (dict(split="train+train"), "each once"), (dict(split="train+nope"), "no split"),
    (dict(rank=2, world_size=2), "rank 2"), (dict(policy="no-such-preset"), "preset"),
])
def test_bad_arguments_are_user_errors(tiny_data, kw, match):
    with pytest.raises(UserError, match=match):
        data_api.build_ssl_loader(tiny_data, backend="torch", **{"batch_size": 8, **kw})


def test_missing_data_folder(tmp_path):
    with pytest.raises(UserError, match="not found"):
        data_api.build_eval_loader(tmp_path / "nope", backend="torch")


def test_defaults_and_dispatch(tiny_data):
    loader = data_api.build_ssl_loader(tiny_data, backend="torch", res=16, batch_size=8, workers=0,
                                       policy="crop-only")
    assert loader.backend == "torch" and loader.num_samples == 32  # whole batches, rank 0 of 1
    q, k = next(iter(loader))
    assert q.device == resolve_device(None)
    ev = data_api.build_eval_loader(load_manifest(tiny_data), backend="torch", res=16, batch_size=4, workers=0,
                                    rank=1, world_size=3)
    assert ev.num_samples == 4 and len(ev) == 1


def test_sharding_helpers():
    assert common.eval_resize(224) == 256 and common.eval_resize(64) == 73
    assert torch.equal(common.eval_rank_indices(7, 1, 3), torch.tensor([1, 4]))
    ranks = [common.ssl_rank_indices(10, r, 3, seed=0, epoch=2) for r in range(3)]
    assert [len(r) for r in ranks] == [3, 3, 3] and len(set(torch.cat(ranks).tolist())) == 9
    assert not torch.equal(ranks[0], common.ssl_rank_indices(10, 0, 3, seed=0, epoch=3))
    assert common.num_batches(10, 4, True) == 2 and common.num_batches(10, 4, False) == 3


@pytest.mark.parametrize("kw, match", [
    (dict(batch_size=37), "fewer than batch_size"), (dict(res=0), "res"), (dict(split="nope"), "no split"),
    (dict(indices=[0, 0]), "each sample once"), (dict(indices=[36]), "out of range"),
    (dict(indices=[]), "at least one"),
])
def test_labelled_bad_arguments_are_user_errors(tiny_data, kw, match):
    with pytest.raises(UserError, match=match):
        data_api.build_labelled_loader(tiny_data, backend="torch", **{"batch_size": 8, **kw})


def test_labelled_dispatch_and_contract(tiny_data):
    manifest = load_manifest(tiny_data)
    loader = data_api.build_labelled_loader(tiny_data, backend="torch", res=16, batch_size=8, workers=0, device="cpu")
    assert loader.backend == "torch" and len(loader) == 4
    batches = list(loader)
    assert [len(y) for _, y in batches] == [8] * 4  # full batches only
    x, y = batches[0]
    assert x.shape == (8, 3, 16, 16) and y.dtype == torch.int64
    labels = data_api.split_labels(tiny_data, "val")
    assert labels.dtype == torch.int64 and torch.bincount(labels).tolist() == manifest.raw["splits"]["val"]["per_class"]
    assert torch.equal(data_api.split_labels(tiny_data, "train+val"),
                       torch.cat([data_api.split_labels(tiny_data, "train"), labels]))


class _Fake:
    backend = "fake"

    def __init__(self, name, n):
        self.name, self.n, self.epochs = name, n, []

    num_samples = property(lambda self: 2 * self.n)

    def __len__(self):
        return self.n

    def set_epoch(self, epoch, start_batch=0):
        self.epochs.append(epoch)
        self.start = start_batch

    def __iter__(self):
        for i in range(self.start, self.n):
            yield (self.name, i)


def test_interleaved_loader_takes_every_part_batch_once_in_a_seeded_order():
    a, b = _Fake("a", 5), _Fake("b", 2)
    loader = common.InterleavedLoader([a, b], seed=1)
    assert len(loader) == 7 and loader.num_samples == 14 and loader.backend == "fake"
    first = list(loader)
    assert sorted(first) == [("a", i) for i in range(5)] + [("b", 0), ("b", 1)]
    assert [x for x in first if x[0] == "a"] == [("a", i) for i in range(5)]  # each part in its own order
    second = list(loader)  # successive passes are successive epochs, as FFCV's loader does
    assert a.epochs == b.epochs == [0, 1]
    assert [x[0] for x in first] == ["ab"[p] for p in loader.order(0)] != [x[0] for x in second]
    loader.set_epoch(0)
    assert list(loader) == first
    loader.set_epoch(0, start_batch=3)  # a resume: each part skips its batches among the first 3
    assert list(loader) == first[3:]
    assert common.part_seed(3, 0) == 3 and len({common.part_seed(3, p) for p in range(4)}) == 4


def _debug_ssl(backend, tiny_data, **kw):
    import importlib

    module = importlib.import_module(f"fasthpt.data.{backend}_backend")
    opts = dict(split="train", res=16, batch_size=6, policy=data_api.AugPolicy(), workers=2, device=torch.device("cpu"),
                seed=4, rank=0, world_size=1, drop_last=True, channels_last=False, debug=True)
    opts.update(kw)
    return module.build_ssl_loader(load_manifest(tiny_data), **opts)


def _kept(batches):
    """(sample indices, first view) per batch, copied (FFCV refills its CPU slots)."""
    return [(b.indices.clone(), b.views[0].clone()) for b in batches]


@pytest.mark.parametrize("backend", ["ffcv", "dali", "torch"])
def test_every_way_of_iterating_gives_the_epochs_batches(tiny_data, backend):
    """Composer's islice (which never finishes an epoch's generator), a pass broken off after one
    batch, a jump to another epoch, a resume at start_batch, and passes without set_epoch (the next
    epoch): each gives exactly the batches of that epoch (or its tail) of a fresh loader."""
    if data_api.available_backends()[backend]:
        pytest.skip(data_api.available_backends()[backend])
    ref = _debug_ssl(backend, tiny_data)

    def epoch(e, start=0):
        ref.set_epoch(e)
        return _kept(ref)[start:]

    want = {e: epoch(e) for e in range(5)}
    loader = _debug_ssl(backend, tiny_data)
    got = {}
    for e in range(3):
        loader.set_epoch(e)
        got[e] = _kept(itertools.islice(loader, len(loader)))
    it = iter(loader)  # epoch 3, broken off
    next(it)
    it.close()
    loader.set_epoch(4, start_batch=2)
    got["4 from 2"] = _kept(loader)
    got["next"] = _kept(loader)  # no set_epoch: epoch 5
    loader.set_epoch(1)
    got["1 again"] = _kept(loader)
    expect = {0: want[0], 1: want[1], 2: want[2], "4 from 2": want[4][2:], "next": epoch(5), "1 again": want[1]}
    for key, batches in expect.items():
        assert len(got[key]) == len(batches), key
        for (i, x), (j, y) in zip(got[key], batches):
            assert torch.equal(i, j) and torch.equal(x, y), key
