"""Smoke tests that keep the pinned stack honest: each library does its core job on the CPU."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image


def _jpeg_bytes(rng: np.random.Generator, size: int = 32) -> tuple[bytes, np.ndarray]:
    # smooth content so JPEG round-trips closely
    base = rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)
    img = np.array(Image.fromarray(base).resize((size, size), Image.BILINEAR))
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95)
    return buf.getvalue(), img


def test_ffcv_write_and_read_back(tmp_path):
    from ffcv.fields import IntField, RGBImageField
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.decoders import SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.writer import DatasetWriter

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (24, 24, 3), dtype=np.uint8) for _ in range(4)]

    class DS:
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return images[i], i

    path = str(tmp_path / "tiny.beton")
    fields = {"image": RGBImageField(write_mode="raw"), "label": IntField()}
    DatasetWriter(path, fields, num_workers=1).from_indexed_dataset(DS())
    loader = Loader(path, batch_size=4, num_workers=1, order=OrderOption.SEQUENTIAL,
                    pipelines={"image": [SimpleRGBImageDecoder()], "label": [IntDecoder()]})
    (imgs, labels), = list(loader)
    assert np.array_equal(np.asarray(imgs), np.stack(images))  # raw mode: pixel-exact
    assert np.asarray(labels).ravel().tolist() == [0, 1, 2, 3]


def test_dali_cpu_pipeline_batch():
    from nvidia.dali import fn, pipeline_def, types

    rng = np.random.default_rng(1)
    encoded = [np.frombuffer(_jpeg_bytes(rng)[0], dtype=np.uint8) for _ in range(3)]

    @pipeline_def(batch_size=3, num_threads=1, device_id=None)
    def pipe():
        jpegs = fn.external_source(source=lambda: encoded, batch=True, dtype=types.UINT8)
        images = fn.decoders.image(jpegs, device="cpu", output_type=types.RGB)
        return fn.resize(images, resize_x=16, resize_y=16)

    p = pipe()
    p.build()
    (out,) = p.run()
    batch = [np.array(out.at(i)) for i in range(3)]
    assert all(b.shape == (16, 16, 3) and b.dtype == np.uint8 for b in batch)
    assert not np.array_equal(batch[0], batch[1])


def test_webdataset_shard_round_trip(tmp_path):
    import webdataset as wds

    rng = np.random.default_rng(2)
    samples = [_jpeg_bytes(rng) for _ in range(5)]
    shard = str(tmp_path / "s-000000.tar")
    with wds.TarWriter(shard) as sink:
        for i, (jpg, _) in enumerate(samples):
            sink.write({"__key__": f"k{i:04d}", "jpg": jpg, "cls": str(i % 2).encode()})
    got = list(wds.WebDataset(shard, shardshuffle=False).decode("rgb8").to_tuple("jpg", "cls"))
    assert [int(c) for _, c in got] == [i % 2 for i in range(5)]
    for (img, _), (_, ref) in zip(got, samples):
        assert img.shape == ref.shape
        assert np.abs(img.astype(int) - ref.astype(int)).mean() < 4  # JPEG q95 round trip


def test_composer_two_batch_fit(tmp_path):
    from composer import Trainer
    from composer.models import ComposerClassifier
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    model = ComposerClassifier(net, num_classes=3)
    data = TensorDataset(torch.randn(16, 3, 2, 2), torch.randint(0, 3, (16,)))
    before = [p.detach().clone() for p in net.parameters()]
    trainer = Trainer(model=model, train_dataloader=DataLoader(data, batch_size=8), max_duration="2ba",
                      optimizers=torch.optim.SGD(net.parameters(), lr=0.1), device="cpu",
                      save_folder=None, progress_bar=False, log_to_console=False, loggers=[])
    trainer.fit()
    assert int(trainer.state.timestamp.batch) == 2
    assert any(not torch.equal(b, p) for b, p in zip(before, net.parameters()))
