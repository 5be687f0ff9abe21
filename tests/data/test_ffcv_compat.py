"""fasthpt.data.ffcv_compat: the FFCV internals it relies on are still there, in the shape it uses.

An FFCV upgrade fails here first, naming the internal that changed (one parametrized case per item
of the module's docstring): re-read that part of FFCV, adapt ffcv_compat, then raise VERIFIED.
Also: another FFCV version is refused with one line, and a loader built through the module visits
the order it is given, epoch after epoch, with its batch slots reused.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import queue
import re
import sys
import threading

import numpy as np
import pytest
import torch

pytest.importorskip("ffcv")

import fasthpt.data as data_api  # noqa: E402
from fasthpt.data import common  # noqa: E402
from fasthpt.errors import UserError  # noqa: E402
from fasthpt.manifest import load_manifest  # noqa: E402


@pytest.fixture(scope="module")
def compat():
    try:
        return importlib.import_module("fasthpt.data.ffcv_compat")
    except ImportError as exc:  # FFCVVersionError among them: say which version, loudly
        pytest.fail(f"fasthpt.data.ffcv_compat does not import: {exc}")


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def _uses(obj, *snippets):
    """``obj``'s source still holds each snippet (whitespace-insensitive)."""
    source = _flat(inspect.getsource(obj))
    for snippet in snippets:
        assert _flat(snippet) in source, f"{obj.__module__}.{obj.__qualname__} no longer has: {snippet}"


def _params(func) -> list[str]:
    return list(inspect.signature(func).parameters)


def _traversal_order():
    from ffcv.loader.loader import Loader
    from ffcv.traversal_order.base import TraversalOrder

    _uses(Loader.__init__, "elif isinstance(order, TraversalOrder): self.traversal_order: TraversalOrder = order(self)",
          "self.next_epoch: int = 0", "self.first_traversal_order = self.next_traversal_order()")
    _uses(Loader.next_traversal_order, "return self.traversal_order.sample_order(self.next_epoch)")
    _uses(Loader.__iter__, "order = self.next_traversal_order()", "self.next_epoch += 1")
    _uses(Loader.__len__, "next_order = self.first_traversal_order")
    assert _params(TraversalOrder.__init__) == ["self", "loader"]
    assert _params(TraversalOrder.sample_order) == ["self", "epoch"]
    assert {"fname", "batch_size", "num_workers", "os_cache", "order", "pipelines", "drop_last",
            "batches_ahead"} <= set(_params(Loader.__init__))


def _batch_memory():
    from ffcv.loader.epoch_iterator import EpochIterator
    from ffcv.pipeline.graph import Graph

    assert _params(Graph.allocate_memory) == ["self", "batch_size", "batches_ahead"]
    _uses(EpochIterator.__init__, "self.memory_allocations = self.loader.graph.allocate_memory("
                                  " self.loader.batch_size, self.loader.batches_ahead + 2 )")
    _uses(Graph.allocate_memory, "memory_buffers[kind][node_id] = allocated_buffer")
    _uses(Graph.collect_requirements, "'shared': {}, 'operation': {}")


def _pipeline_runner():
    from ffcv.loader.epoch_iterator import EpochIterator, select_buffer

    _uses(EpochIterator.__init__, "self.memory_context = self.loader.memory_manager.schedule_epoch( batches)",
          "self.storage_state = self.memory_context.state")
    _uses(EpochIterator.run_pipeline, "self.memory_context.start_batch(b_ix)", "code, outputs = self.loader.code",
          "'batch_indices': batch_indices, 'storage_state': self.storage_state, 'metadata': self.metadata,",
          "f'memory_{k}':select_buffer(v, batch_slot, len(batch_indices))",
          "for (k, v) in self.memory_allocations['operation'].items()",
          "f'shared_memory_{k}': select_buffer(v, batch_slot, len(batch_indices))",
          "for (k, v) in self.memory_allocations['shared'].items()",
          "for stage_code, define_outputs in code: results = stage_code(**args)",
          "for node_id, result in zip(define_outputs, results): args[f'result_{node_id}'] = result")
    _uses(EpochIterator.__init__, "self.metadata = loader.reader.metadata")
    _uses(select_buffer, "return tuple(select_buffer(x, batch_slot, count) for x in buffer)",
          "return buffer[batch_slot][:count]")


def _queue_polling():
    from ffcv.loader.epoch_iterator import EpochIterator

    _uses(EpochIterator.__init__, "self.output_queue = Queue(self.loader.batches_ahead)")
    _uses(EpochIterator.run, "except StopIteration: self.output_queue.put(None)")
    _uses(EpochIterator.__next__, "result = self.output_queue.get()")
    _uses(EpochIterator.close, "self.terminate_event.set()")
    assert issubclass(EpochIterator, threading.Thread)
    assert hasattr(queue.Queue(), "not_empty") and callable(queue.Queue()._qsize)


def _kept_pipelines():
    from ffcv.loader.loader import Loader

    _uses(Loader.generate_code, "self.code = self.graph.codegen_all(code)")
    _uses(Loader.__iter__, "if self.code is None or self.recompile: self.generate_code()")


def _decoder_inputs():
    import ffcv.libffcv as lib
    from ffcv.fields.rgb_image import IMAGE_MODES, RGBImageField
    from ffcv.pipeline.graph import Graph, Node
    from ffcv.pipeline.operation import Operation
    from ffcv.types import get_metadata_type

    _uses(Operation.accept_globals, "self.metadata = metadata", "self.memory_read = memory_read")
    _uses(Graph.collect_requirements, "metadata = self.metadata[f'f{fix}']",
          "operation.accept_globals(metadata, self.memory_read)")
    _uses(Node.with_indices.fget, "return self.code.with_indices")
    _uses(Node.func_call_ast.fget, "if self.with_indices:", "ast.Name(id='batch_indices', ctx=ast.Load())")
    _uses(get_metadata_type, "np.dtype([('', handler.metadata_type) for handler in handlers], align=True)")
    assert len(lib.ctypes_imdecode.argtypes) == 13 and len(lib.ctypes_memcopy.argtypes) == 3
    assert IMAGE_MODES["jpg"] == 0 and IMAGE_MODES["raw"] == 1
    assert {"mode", "height", "width", "data_ptr"} <= set(RGBImageField().metadata_type.names)


def _writer():
    import ffcv.writer as writer
    from ffcv.writer import DatasetWriter

    assert all(hasattr(writer, name) for name in ("tqdm", "Process", "sleep"))
    _uses(DatasetWriter._write_common, "processes = [Process(target=work_fn, args=worker_args)",
          "progress = tqdm(total=self.num_samples)", "sleep(0.1)")
    _uses(writer.handle_sample, "field.encode(destination, field_value, allocator.malloc)")
    _uses(DatasetWriter.prepare, "type_id = field_type_to_type_id.get(type(field), 255)")


INTERNALS = {"traversal order": _traversal_order, "batch memory": _batch_memory,
             "pipeline runner": _pipeline_runner, "queue polling": _queue_polling,
             "kept-alive pipelines": _kept_pipelines, "decoder inputs": _decoder_inputs, "writer": _writer}


@pytest.mark.parametrize("internal", sorted(INTERNALS))
def test_the_ffcv_internals_relied_on_are_unchanged(compat, internal):
    assert compat.installed_version() == compat.VERIFIED
    INTERNALS[internal]()


def test_another_version_is_one_line():
    from fasthpt.data.ffcv_compat import VERIFIED, version_problem

    assert version_problem(VERIFIED) is None
    for other in ("1.1.0", None):
        line = version_problem(other)
        assert "\n" not in line and VERIFIED in line and (other or "unknown") in line


@pytest.mark.parametrize("version,reason,refusal", [
    ("9.9", r"cannot import ffcv: FFCV 9\.9 is installed, but fasthpt relies on internals of FFCV ",
     r"FFCV 9\.9 is installed.*; reinstall it: pip install 'fasthpt\[ffcv\]'"),
    (None, r"missing module 'ffcv': pip install 'fasthpt\[ffcv\]'", r"FFCV is not installed: pip install"),
], ids=["another-version", "not-installed"])
def test_the_backend_is_unavailable_and_prep_refuses(compat, monkeypatch, version, reason, refusal):
    """With FFCV 9.9 installed, `auto` moves on with that reason and prep stops at one line; with no
    FFCV at all (no package metadata, no module), both say it is missing, as before the check."""
    from dataprep.writers import import_ffcv

    real = importlib.metadata.version

    def fake(name):
        if name != "ffcv":
            return real(name)
        if version is None:
            raise importlib.metadata.PackageNotFoundError(name)
        return version

    monkeypatch.setattr(importlib.metadata, "version", fake)
    if version is None:
        monkeypatch.setitem(sys.modules, "ffcv", None)  # what `import ffcv` meets where it is absent
    for name in ("ffcv_compat", "ffcv_ops", "ffcv_backend"):  # imported anew, under the patch
        monkeypatch.delitem(sys.modules, f"fasthpt.data.{name}", raising=False)
        monkeypatch.delattr(data_api, name, raising=False)
    found = data_api.available_backends()["ffcv"]
    assert re.search(reason, found) and "\n" not in found, found
    assert version is None or f"FFCV {compat.VERIFIED} " in found
    with pytest.raises(UserError, match=refusal):
        import_ffcv()


def test_a_loader_visits_the_order_it_is_given(compat, tiny_data):
    """Labels only (no image decode): epoch e yields the labels of ``order(e)`` in order, the batch
    slots allocated once for both epochs; the .beton's label field is the shards' labels."""
    from ffcv.fields.basics import IntDecoder

    manifest = load_manifest(tiny_data)
    labels = common.wds_labels(manifest, "train")
    path = manifest.ffcv_path("train")
    assert torch.equal(torch.tensor(compat.read_field(path, "label"), dtype=torch.int64).reshape(-1), labels)
    assert compat.read_field(path, "no such field") is None
    orders = {0: np.arange(35, 5, -1), 1: np.arange(6, 36)}
    loader = compat.open_loader(path, batch_size=7, workers=1, pipelines={"image": None, "label": [IntDecoder()]},
                                drop_last=True, batches_ahead=2)
    compat.adopt(loader, lambda epoch: orders[epoch])
    memory = compat.batch_memory(loader)
    slots = None
    for epoch in (1, 0):
        compat.start_epoch(loader, epoch)
        assert np.array_equal(compat.epoch_order(loader), orders[epoch])
        seen = [np.asarray(b[0]).reshape(-1).copy() for b in compat.batches(loader, lambda: None)]
        assert np.array_equal(np.concatenate(seen), labels[orders[epoch][:28]].numpy())
        assert memory.memory is not None and (slots is None or memory.memory is slots)
        slots = memory.memory
