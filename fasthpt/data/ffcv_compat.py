"""Every use of FFCV's internals, in one module, for the one FFCV version they were read from.

The `ffcv` backend and `fasthpt prep` use FFCV's public interface (Loader, PipelineSpec, the fields
and decoders, Operation / AllocationQuery / Compiler for custom operations, DatasetWriter) and,
beyond it, the internals below, each read from the source of FFCV 1.0.2 (the version the `ffcv`
extra pins). Importing this module refuses any other version (FFCVVersionError, an ImportError:
the backend is then reported unavailable with the reason, and prep says to reinstall), and
tests/data/test_ffcv_compat.py checks that each internal is still there in the shape used here.

1. Traversal order (``adopt``): ``Loader(order=...)`` tests ``isinstance(order, TraversalOrder)``
   and then calls ``order(self)``, so no TraversalOrder class or instance passes
   (ffcv.loader.loader.Loader.__init__); the order is swapped in after construction:
   ``traversal_order``, ``first_traversal_order``, ``next_traversal_order()``; an epoch is chosen
   by setting ``next_epoch`` (``start_epoch``).
2. Batch memory (``ReusedMemory``): ``Graph.allocate_memory(batch_size, slots)``, which
   EpochIterator.__init__ calls at every epoch, replaced on the loader's graph.
3. Pipeline runner (``compile_now``): the steps of ``EpochIterator.run_pipeline`` on one batch:
   ``loader.code`` (a list of (stage, output ids) and the final ids), ``memory_manager.
   schedule_epoch``, the context's ``start_batch`` and ``state``, ``reader.metadata``, the
   {"operation", "shared"} buffers of allocate_memory and epoch_iterator.select_buffer's slicing.
4. Queue polling (``EpochRun``): EpochIterator's ``output_queue`` (a queue.Queue: ``not_empty``,
   ``_qsize``), ``is_alive`` and ``close``. When its thread dies it never posts its end marker.
5. Kept-alive pipelines (``_KEPT``): every loader's compiled ``code``.
6. Decoder inputs: ``Operation.metadata`` and ``memory_read`` (set by ``accept_globals``), the
   ``with_indices`` flag of an operation's code, libffcv's ctypes entry points
   ``ctypes_imdecode`` and ``ctypes_memcopy``, ``IMAGE_MODES["jpg"]``, and the reader's metadata
   columns named ``f<field index>`` (ffcv.types.get_metadata_type).
7. Writer (``stored_jpeg_field``, ``writer_hooks``): ``RGBImageField.encode`` replaced on one
   instance (the writer finds a field's type by ``type(field)``, so a subclass would not be
   readable), and ffcv.writer's module globals ``tqdm``, ``Process`` and ``sleep`` for one write.
"""

from __future__ import annotations

import gc
import importlib.metadata
from contextlib import contextmanager
from functools import partial

import numpy as np

from fasthpt.errors import UserError

VERIFIED = "1.0.2"


class FFCVVersionError(ImportError):
    """The installed FFCV is not the version whose internals this module was read from."""


def installed_version() -> str | None:
    """The installed FFCV's version from its package metadata (FFCV 1.0.2's ``ffcv.__version__``
    still says 0.0.3rc1), or None when there is none."""
    try:
        return importlib.metadata.version("ffcv")
    except importlib.metadata.PackageNotFoundError:
        return None


def version_problem(version: str | None) -> str | None:
    """One line saying why FFCV ``version`` (None: unknown) cannot be used, or None if it can."""
    if version == VERIFIED:
        return None
    return (f"FFCV {version or 'of unknown version'} is installed, but fasthpt relies on internals of "
            f"FFCV {VERIFIED} (fasthpt/data/ffcv_compat.py) and was not verified with another version")


def check_version() -> None:
    version = installed_version()
    if version is None:
        import ffcv  # noqa: F401  (not installed: ModuleNotFoundError, which callers report as such)
    problem = version_problem(version)
    if problem:
        raise FFCVVersionError(problem)


check_version()  # before FFCV itself is imported: nothing below runs on another version

import ffcv.libffcv as _libffcv  # noqa: E402
import ffcv.writer as _writer  # noqa: E402
from ffcv.fields.rgb_image import IMAGE_MODES, RGBImageField  # noqa: E402
from ffcv.loader import Loader, OrderOption  # noqa: E402
from ffcv.reader import Reader  # noqa: E402
from ffcv.traversal_order.base import TraversalOrder  # noqa: E402

# libffcv's C functions (ctypes: callable from numba). imdecode(src, size, height, width, dst,
# crop height, crop width, offset x, offset y, scale num, scale denom, crop?, flip?);
# memcopy(src, dst, size).
imdecode = _libffcv.ctypes_imdecode
memcopy = _libffcv.ctypes_memcopy
JPG_MODE = IMAGE_MODES["jpg"]  # the 'mode' of a JPEG sample in an RGBImageField's metadata

# Compiled pipelines are never freed. numba 0.68 finalizers of a collected FFCV pipeline unregister
# functions that other pipelines' dispatchers still use (libffcv's imdecode is compiled once per
# pipeline): the next build then fails with a KeyError, or a finalizer prints one. A few MB per build.
_KEPT: list = []


# ---------------------------------------------------------------- loaders

def open_loader(path, *, batch_size: int, workers: int, pipelines: dict, drop_last: bool,
                batches_ahead: int) -> Loader:
    """FFCV's Loader over ``path`` (its order is a placeholder until ``adopt``); raises what FFCV
    raises on a file it cannot read (OSError, ValueError)."""
    return Loader(str(path), batch_size=batch_size, num_workers=workers if workers > 0 else -1, os_cache=True,
                  order=OrderOption.SEQUENTIAL, pipelines=pipelines, drop_last=drop_last,
                  batches_ahead=batches_ahead)


def adopt(loader: Loader, indices_for_epoch) -> Loader:
    """Make ``loader`` visit ``indices_for_epoch(epoch)`` (sample indices) each epoch, allocate its
    batch slots once (``ReusedMemory``), keep its pipeline alive, and compile it now."""
    _KEPT.append(loader.code)
    loader.traversal_order = _order_class(indices_for_epoch)(loader)
    loader.first_traversal_order = loader.next_traversal_order()
    loader.graph.allocate_memory = ReusedMemory(loader.graph.allocate_memory)
    compile_now(loader)
    return loader


def _order_class(indices_for_epoch):
    """A TraversalOrder class returning ``indices_for_epoch(epoch)``."""

    class IndexOrder(TraversalOrder):
        def sample_order(self, epoch: int) -> np.ndarray:
            return np.asarray(indices_for_epoch(epoch), dtype=np.int64)

    return IndexOrder


def start_epoch(loader: Loader, epoch: int) -> None:
    """The next pass over ``loader`` is epoch ``epoch``."""
    loader.next_epoch = epoch


def epoch_order(loader: Loader) -> np.ndarray:
    """The sample indices of the next pass, in order (including a partial last batch)."""
    return loader.next_traversal_order()


def batch_memory(loader: Loader) -> ReusedMemory:
    return loader.graph.allocate_memory


class ReusedMemory:
    """Graph.allocate_memory, once per loader instead of once per epoch. FFCV's EpochIterator asks
    for every operation's ``batches_ahead + 2`` batch slots at each epoch: ~0.5 GB at 224 px and
    batch 64 here, whose page faults (and page-locking, with CUDA) cost 37% of the throughput on a
    7-batch epoch (1,420 -> 2,250 samples/s, bench/RESULTS.md). Reuse is safe once the previous
    epoch's thread has stopped writing and its last batch's copies to the device have run: after a
    complete epoch both hold (``batches`` runs ``before_draw`` last); after an abandoned one the
    thread may still be finishing a batch, so ``forget`` makes the next epoch allocate anew (FFCV's
    behaviour)."""

    def __init__(self, allocate):
        self.allocate = allocate
        self.memory = None

    def __call__(self, batch_size, slots):
        if self.memory is None or self.memory[0] != (batch_size, slots):
            self.memory = ((batch_size, slots), self.allocate(batch_size, slots))
        return self.memory[1]

    def forget(self) -> None:
        self.memory = None


def compile_now(loader: Loader) -> None:
    """Run the pipeline once on this thread, so numba compiles it at build time, here: a compile
    error then raises in the caller instead of stopping FFCV's thread, and JIT time stays out of
    the first epoch. The cyclic GC is held off meanwhile (numba dispatcher finalizers running during
    a compile were one source of numba 0.68 KeyErrors seen here). Same steps as FFCV's
    EpochIterator.run_pipeline, on one batch of the first epoch's order."""
    indices = np.asarray(loader.first_traversal_order[: loader.batch_size])
    context = loader.memory_manager.schedule_epoch([indices])
    context.__enter__()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        context.start_batch(0)
        memory = loader.graph.allocate_memory(loader.batch_size, loader.batches_ahead + 2)  # kept for epoch 0
        args = {"batch_indices": indices, "storage_state": context.state, "metadata": loader.reader.metadata,
                **{f"memory_{k}": _slot(v, len(indices)) for k, v in memory["operation"].items()},
                **{f"shared_memory_{k}": _slot(v, len(indices)) for k, v in memory["shared"].items()}}
        stages, _ = loader.code
        for stage, outputs in stages:
            for node_id, result in zip(outputs, stage(**args)):
                args[f"result_{node_id}"] = result
    finally:
        if gc_was_enabled:
            gc.enable()
        context.__exit__(None, None, None)


def _slot(buffer, count):
    """Batch slot 0 of an allocated buffer, its first ``count`` rows (epoch_iterator.select_buffer)."""
    if buffer is None:
        return None
    if isinstance(buffer, tuple):
        return tuple(_slot(b, count) for b in buffer)
    return buffer[0][:count]


class EpochRun:
    """One epoch of an FFCV Loader, started at construction: its thread begins loading at once, so
    an epoch can be started ahead (while the previous epoch's last batch trains). ``draw()`` returns
    the next batch, or None at the epoch's end, and raises instead of hanging when the thread dies
    (FFCV 1.0.2's EpochIterator then never posts its end marker and ``next`` would block forever).
    ``before_draw()`` runs before each draw (drawing lets FFCV refill the previous batch's slot)
    and at ``close``. ``position``: free for the caller (which batch it will deliver next)."""

    def __init__(self, loader: Loader, before_draw, position=None):
        self.loader, self.before_draw, self.position = loader, before_draw, position
        self.it = iter(loader)
        self.complete = False

    def draw(self):
        self.before_draw()
        queue = self.it.output_queue
        with queue.not_empty:
            while not queue._qsize() and self.it.is_alive():
                queue.not_empty.wait(0.5)
        if not queue._qsize() and not self.it.is_alive():
            raise RuntimeError("the FFCV pipeline thread stopped with an error (traceback above)")
        try:
            return next(self.it)
        except StopIteration:
            self.complete = True
            return None

    def close(self) -> None:
        self.before_draw()
        self.it.close()
        if not self.complete:  # FFCV's thread may still write a batch: the next epoch gets new buffers
            batch_memory(self.loader).forget()


def batches(loader: Loader, before_draw):
    """Every batch of the loader's next epoch (an EpochRun drawn to its end, then closed)."""
    run = EpochRun(loader, before_draw)
    try:
        while (batch := run.draw()) is not None:
            yield batch
    finally:
        run.close()


# ---------------------------------------------------------------- files, operations

def field_metadata(reader: Reader, name: str) -> np.ndarray | None:
    """The per-sample metadata of field ``name`` (None: no such field)."""
    if name not in reader.field_names:
        return None
    return reader.metadata[f"f{reader.field_names.index(name)}"]


def record_sizes(reader: Reader, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(heights, widths) of every sample of the BytesField ``name`` holding fasthpt.raster_format
    records, from the records' headers (read at the offsets the reader's metadata gives)."""
    from fasthpt.raster_format import HEADER

    meta = field_metadata(reader, name)
    data = np.memmap(reader.file_name, dtype=np.uint8, mode="r")
    heads = [HEADER.unpack(data[int(p): int(p) + HEADER.size].tobytes()) for p in meta["ptr"]]
    return np.array([h[0] for h in heads], np.int64), np.array([h[1] for h in heads], np.int64)


def read_field(path, name: str) -> np.ndarray | None:
    """``field_metadata`` of a .beton file; raises what FFCV raises on a file it cannot read
    (OSError, ValueError, AssertionError)."""
    return field_metadata(Reader(str(path)), name)


def decoder_inputs(op) -> tuple:
    """(metadata of the operation's field, the compiled sample reader) that FFCV hands a decoder."""
    return op.metadata, op.memory_read


def with_indices(code):
    """Mark an operation's code to be called with the batch's sample indices as a third argument."""
    code.with_indices = True
    return code


# ---------------------------------------------------------------- writer

def stored_jpeg_field(max_res: int | None, jpeg_quality: int) -> RGBImageField:
    """An RGBImageField (write mode 'jpg') whose samples are JPEG bytes already encoded: each is
    stored as it is, with no decode or re-encode. Samples: ((uint8 bytes, height, width), ...)."""
    field = RGBImageField(write_mode="jpg", max_resolution=max_res or None, jpeg_quality=jpeg_quality)
    # IMAGE_MODES is a numba typed dict: ~0.3 ms per lookup from Python, so read it once.
    field.encode = partial(_encode_stored_jpeg, int(JPG_MODE))
    return field


def _encode_stored_jpeg(jpg_mode: int, destination, value, malloc) -> None:
    """RGBImageField.encode for bytes that are already a JPEG: the 'jpg' mode record that FFCV's
    SimpleRGBImageDecoder reads (mode, height, width, data_ptr)."""
    data, height, width = value
    destination["mode"] = jpg_mode
    destination["height"], destination["width"] = height, width
    destination["data_ptr"], storage = malloc(data.nbytes)
    storage[:] = data


@contextmanager
def writer_hooks(desc: str, progress: bool):
    """Two patches of FFCV's writer module for the duration of one write:
    - its tqdm bar is labelled, or silenced when asked;
    - its wait loop (`while done != num_samples: sleep(0.1)`) would spin forever if a writer process
      died (disk full, a bad page); the patched sleep checks the processes and raises instead."""
    from tqdm import tqdm

    started: list = []
    base_process, base_sleep = _writer.Process, _writer.sleep

    class TrackedProcess(base_process):
        def start(self):
            started.append(self)
            super().start()

    def checked_sleep(seconds):
        failed = [p.exitcode for p in started if p.exitcode not in (None, 0)]
        if failed:
            raise UserError(f"{desc}: FFCV's writer process failed (exit code {failed[0]}); "
                            "see its error above (disk full?)")
        base_sleep(seconds)

    originals = {"tqdm": _writer.tqdm, "Process": base_process, "sleep": base_sleep}
    _writer.tqdm = partial(tqdm, desc=desc, disable=not progress, leave=False)
    _writer.Process, _writer.sleep = TrackedProcess, checked_sleep
    try:
        yield
    finally:
        for name, value in originals.items():
            setattr(_writer, name, value)
        for p in started:
            if p.is_alive():
                p.terminate()
            p.join()
