"""Read a prepared split back with each consumer's own reader: FFCV's Loader, webdataset, DALI.

Used by the tests to check that every format holds the same labels and pixels; handy to inspect a
prepared folder by hand as well. Each function returns (list of HxWx3 uint8 arrays, list of labels);
the raster_* functions, for raster datasets (dataprep/rasters.py), (list of H x W x C arrays in the
stored dtype, list of labels).
"""

from __future__ import annotations

import numpy as np


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def ffcv_samples(path):
    from dataprep.writers import import_ffcv

    import_ffcv("ffcv.loader")  # a missing FFCV: one line naming the install
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.decoders import SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption

    loader = Loader(str(path), batch_size=16, num_workers=1, order=OrderOption.SEQUENTIAL, drop_last=False,
                    pipelines={"image": [SimpleRGBImageDecoder()], "label": [IntDecoder()]})
    images, labels = [], []
    for imgs, labs in loader:
        images += [np.array(x) for x in imgs]
        labels += np.asarray(labs).ravel().tolist()
    return images, labels


def wds_samples(shards):
    import webdataset as wds

    ds = wds.WebDataset([str(s) for s in shards], shardshuffle=False).decode("rgb8").to_tuple("jpg", "cls")
    images, labels = [], []
    for img, cls in ds:
        images.append(img)
        labels.append(int(cls))
    return images, labels


def dali_samples(shards):
    from nvidia.dali import fn, pipeline_def, types

    n = sum(int(s.with_suffix(".idx").read_text().split()[1]) for s in shards)

    @pipeline_def(batch_size=n, num_threads=1, device_id=None)
    def pipe():
        jpg, cls = fn.readers.webdataset(
            paths=[str(s) for s in shards], index_paths=[str(s.with_suffix(".idx")) for s in shards],
            ext=["jpg", "cls"], missing_component_behavior="error", random_shuffle=False)
        return fn.decoders.image(jpg, device="cpu", output_type=types.RGB), cls

    p = pipe()
    p.build()
    imgs, cls = p.run()
    images = [np.array(imgs.at(i)) for i in range(n)]
    labels = [int(bytes(np.array(cls.at(i))).decode()) for i in range(n)]
    return images, labels


def raster_ffcv_samples(path):
    """FFCV's Reader gives each record's file offset and size (what BytesDecoder copies); the
    records are read there. Not through a Loader: each Loader compiles BytesDecoder's memcpy anew,
    and numba's finalizers of those duplicates raise KeyError when collected, which in CPython
    3.11 can surface later as "SystemError: AST constructor recursion depth mismatch"."""
    from dataprep.writers import import_ffcv
    from fasthpt.raster_format import unpack

    compat = import_ffcv("fasthpt.data.ffcv_compat")
    records, labels = compat.read_field(path, "image"), compat.read_field(path, "label")
    data = np.memmap(path, dtype=np.uint8, mode="r")
    arrays = [unpack(np.asarray(data[int(r["ptr"]) : int(r["ptr"]) + int(r["size"])])).copy() for r in records]
    return arrays, [int(v) for v in labels]


def raster_wds_samples(shards):
    import webdataset as wds

    from fasthpt.raster_format import npy_array

    ds = wds.WebDataset([str(s) for s in shards], shardshuffle=False).to_tuple("npy", "cls")
    arrays, labels = [], []
    for npy, cls in ds:
        arrays.append(npy_array(npy))
        labels.append(int(cls))
    return arrays, labels


def raster_dali_samples(shards):
    """Through each shard's DALI index (the `npy` members) and DALI's own numpy decoder."""
    from nvidia.dali import fn, pipeline_def

    n = sum(int(s.with_suffix(".idx").read_text().split()[1]) for s in shards)

    @pipeline_def(batch_size=n, num_threads=1, device_id=None)
    def pipe():
        npy, cls = fn.readers.webdataset(
            paths=[str(s) for s in shards], index_paths=[str(s.with_suffix(".idx")) for s in shards],
            ext=["npy", "cls"], missing_component_behavior="error", random_shuffle=False)
        return fn.decoders.numpy(npy, device="cpu"), cls

    p = pipe()
    p.build()
    arrays, cls = p.run()
    return ([np.array(arrays.at(i)) for i in range(n)],
            [int(bytes(np.array(cls.at(i))).decode()) for i in range(n)])
