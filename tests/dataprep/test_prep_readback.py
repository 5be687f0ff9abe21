"""The prepared tiny dataset read back by each consumer: FFCV's Loader, webdataset, DALI's reader.

Every reader must give the same labels as the source folders and the same pixels as the source
images, within JPEG loss: PSNR >= 28 dB against the source (PNG sources are JPEG-encoded at quality
90; the fixture's hard colour edges are JPEG's worst case, ~30 dB). webdataset (PIL) and DALI decode
a stored JPEG within 2 levels of each other; FFCV decodes with libjpeg-turbo's fast integer IDCT
(TJFLAG_FASTDCT in ffcv/libffcv.cpp), a few levels off, so it must agree with them at >= 35 dB.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from tiny_images import TINY_CLASSES, TINY_PER_CLASS

from dataprep.readback import dali_samples, ffcv_samples, psnr, wds_samples
from dataprep.samples import read_samples
from fasthpt.manifest import load_manifest

MIN_PSNR_DB = 28.0
MIN_PSNR_FFCV_VS_OTHERS_DB = 35.0
# nvJPEG through DALI `mixed` on an H200 (2026-11-30, bench/gpu/gpu_tests.xml) agreed with the CPU
# decoder at 27.5 dB on the fixture, a few levels per pixel (its hardware JPEG decoder takes baseline
# JPEGs on A100/H100-class GPUs; the cause is not yet pinned down). A wrong channel order, orientation
# or image is far below 20 dB, which is what this bound is for.
MIN_PSNR_GPU_DECODER_DB = 25.0


def source_of(tiny_data, tiny_folder, split):
    """(pixels, label) of the source image behind each sample of a split, in stored order."""
    classes = load_manifest(tiny_data).classes
    refs = []
    for rel, label in read_samples(tiny_data, split):
        assert label == classes.index(rel.split("/")[0])  # the folder names the class
        refs.append((np.asarray(Image.open(tiny_folder / rel).convert("RGB")), label))
    return refs


def test_manifest_counts_and_classes(tiny_data):
    m = load_manifest(tiny_data)
    assert m.classes == list(TINY_CLASSES)
    assert m.count("val") == m.count("test") == len(TINY_CLASSES) * TINY_PER_CLASS // 5  # 0.2 each
    assert m.raw["splits"]["val"]["per_class"] == m.raw["splits"]["test"]["per_class"] == [3, 3, 3, 3]
    assert m.raw["splits"]["train"]["per_class"] == [9, 9, 9, 9]
    assert m.formats == ["ffcv", "wds"]
    for split in ("train", "val", "test"):
        assert m.ffcv_path(split).is_file()
        assert all(s.is_file() and s.with_suffix(".idx").is_file() for s in m.wds_shards(split))


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_every_reader_gives_the_source_labels_and_pixels(tiny_data, tiny_folder, split):
    m = load_manifest(tiny_data)
    refs = source_of(tiny_data, tiny_folder, split)
    readers = {
        "ffcv": ffcv_samples(m.ffcv_path(split)),
        "webdataset": wds_samples(m.wds_shards(split)),
        "dali": dali_samples(m.wds_shards(split)),
    }
    for name, (images, labels) in readers.items():
        assert labels == [lab for _, lab in refs], name
        for img, (ref, _) in zip(images, refs):
            assert img.shape == ref.shape, name
            assert psnr(img, ref) >= MIN_PSNR_DB, name
    for a, b in zip(readers["webdataset"][0], readers["dali"][0]):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 2
    for a, b in zip(readers["ffcv"][0], readers["webdataset"][0]):
        assert psnr(a, b) >= MIN_PSNR_FFCV_VS_OTHERS_DB


def test_mean_std_match_a_direct_computation(tiny_data):
    import tarfile

    m = load_manifest(tiny_data)
    pixels = []
    for shard in m.wds_shards("train"):
        with tarfile.open(shard) as tf:
            for member in tf:
                if member.name.endswith(".jpg"):
                    data = tf.extractfile(member).read()
                    pixels.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).reshape(-1, 3))
    allpx = np.concatenate(pixels).astype(np.float64)
    assert len(pixels) == m.count("train")
    np.testing.assert_allclose(m.mean, allpx.mean(0), rtol=0, atol=1e-9)
    np.testing.assert_allclose(m.std, allpx.std(0), rtol=0, atol=1e-9)


def test_dali_index_matches_dalis_own_tool(tiny_data):
    """Our index lists the same members at the same offsets as DALI's wds2idx would."""
    import tarfile

    for shard in load_manifest(tiny_data).wds_shards("train"):
        lines = shard.with_suffix(".idx").read_text().splitlines()
        version, count = lines[0].split()
        assert version == "v1.2" and int(count) == len(lines) - 1
        ours = {}
        for line in lines[1:]:
            f = line.split()
            for j in range(0, len(f), 4):
                ours[f[j + 3]] = (int(f[j + 1]), int(f[j + 2]))
        with tarfile.open(shard) as tf:
            theirs = {m.name: (m.offset_data, m.size) for m in tf if m.isfile()}
        assert ours == theirs


def test_many_small_shards_read_back_in_order(tiny_folder, tmp_path):
    """Shard boundaries and per-shard DALI indexes: readers see every sample once, in order."""
    from dataprep import prepare

    out = prepare("multi", out=tmp_path, src=tiny_folder, formats=("wds",), shard_size=5,
                  val_frac=0.25, workers=1, progress=False)
    m = load_manifest(out)
    shards = m.wds_shards("train")
    assert len(shards) == -(-m.count("train") // 5)
    want = [lab for _, lab in source_of(out, tiny_folder, "train")]
    assert wds_samples(shards)[1] == want
    assert dali_samples(shards)[1] == want


@pytest.mark.gpu
def test_dali_gpu_decoder_reads_the_stored_jpegs(tiny_data):
    """nvJPEG (device='mixed') decodes the stored 4:4:4 baseline JPEGs as the same images as the CPU decoder."""
    from nvidia.dali import fn, pipeline_def, types

    shards = load_manifest(tiny_data).wds_shards("train")
    cpu_images, labels = dali_samples(shards)

    @pipeline_def(batch_size=len(labels), num_threads=2, device_id=0)
    def pipe():
        jpg, cls = fn.readers.webdataset(
            paths=[str(s) for s in shards], index_paths=[str(s.with_suffix(".idx")) for s in shards],
            ext=["jpg", "cls"], random_shuffle=False)
        return fn.decoders.image(jpg, device="mixed", output_type=types.RGB), cls

    p = pipe()
    p.build()
    imgs, _ = p.run()
    imgs = imgs.as_cpu()
    for i, ref in enumerate(cpu_images):
        assert psnr(np.array(imgs.at(i)), ref) >= MIN_PSNR_GPU_DECODER_DB
