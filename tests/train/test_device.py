"""Device and precision, decided in one place (fasthpt.device) for training, loaders and evaluation."""

from __future__ import annotations

import pytest
import torch

from fasthpt import device
from fasthpt.errors import UserError


@pytest.fixture(params=[False, True], ids=["cpu-machine", "cuda-machine"])
def has_cuda(request, monkeypatch) -> bool:
    """What the machine reports, either way, whatever this one has (nothing is placed on it)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: request.param)
    return request.param


def test_auto_means_cuda_when_the_machine_has_it(has_cuda):
    want = "cuda" if has_cuda else "cpu"
    assert device.resolve_device() == device.resolve_device(None) == device.resolve_device("auto") == torch.device(want)
    assert device.available_device("auto") == torch.device(want)
    assert device.trainer_device() == ("gpu" if has_cuda else "cpu")


def test_a_named_device_is_taken_as_given(has_cuda):
    assert device.resolve_device("cpu") == torch.device("cpu")
    assert device.resolve_device(torch.device("cuda", 1)) == torch.device("cuda", 1)
    assert device.rank_device("gpu", 3) == torch.device("cuda", 3)
    assert device.rank_device("cpu", 3) == torch.device("cpu")


def test_cuda_named_on_a_machine_without_it_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError) as err:
        device.available_device("cuda:1")
    assert str(err.value) == "--device cuda:1: CUDA is not available on this machine (use cpu or auto)"


@pytest.mark.parametrize("asked, on, want", [("auto", "gpu", "amp_bf16"), ("auto", "cpu", "fp32"),
                                             ("fp32", "cpu", "fp32"), ("amp_fp16", "gpu", "amp_fp16")])
def test_precision_auto_is_bf16_on_a_gpu_and_fp32_on_the_cpu(asked, on, want):
    assert device.resolve_precision(asked, on) == want


def test_half_precision_on_the_cpu_is_refused_naming_the_key():
    with pytest.raises(UserError) as err:
        device.resolve_precision("amp_bf16", "cpu")
    assert str(err.value) == "train.precision=amp_bf16 needs a GPU; use fp32 or auto on the CPU"


def test_loaders_and_evaluation_resolve_through_the_same_function(has_cuda):
    import fasthpt.data as data_api
    from fasthpt.eval import common as eval_common

    assert data_api._setup.__code__.co_names.count("resolve_device") == 1  # the loaders call fasthpt.device
    random = eval_common.Backbone(torch.nn.Linear(2, 2), "random", "0")  # not an in-memory module
    assert eval_common.module_device(random, "auto") == device.resolve_device()
