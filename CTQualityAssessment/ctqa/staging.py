"""Volume-sized maps that are not held in memory: (z, y, x) arrays read and written a slab of slices at a time.

An assessment's output maps (quality, its windows, noise SD, reference SSIM) are as large as the CT in float32, and
a whole-body series has 1,500-3,000 slices. Holding them all would make the process's memory grow with 17x the int16
input; instead each map is computed slab by slab and kept where the process's memory does not count it:

- ``StagedMap``: an anonymous temporary file (removed by the OS when closed or when the process ends) written and
  read with pwrite/pread, so its pages live in the page cache (reclaimable), not in the process. No np.memmap: its
  touched pages would count in the process's resident memory again.
- ``ComputedMap``: slabs computed on demand from smaller data (the noise map from its window grid).
- ``PackedMask``: a bool mask kept bit-packed in memory (1/8 byte per voxel).

Each is a ``SlabMap``: ``read(start, stop)`` returns the slabs as an ndarray; indexing (``map[z]``, ``map[a:b]``,
``map[z, rows, columns]``) and iteration (slice by slice) read only what they need. Anything else - numpy functions,
ufuncs and operators, boolean masks, ndarray methods - works on the materialised whole array (for tests and small
volumes; the pipeline itself never does this).

Temporary files go to CTQA_STAGING_DIR when it is set, else to the system's temporary folder (TMPDIR).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import tempfile
import threading
from collections.abc import Callable, Iterator

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

#: Slices read at a time when a map is iterated or materialised.
READ_SLICES = 16


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, None where there is none (macOS, Windows, musl)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError, TypeError):
        return None


#: glibc mallopt parameters and the threshold tune_allocator sets (bytes).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
ALLOCATOR_THRESHOLD = 256 << 20


def _set_numpy_huge_pages(enabled: bool) -> None:
    """Whether numpy advises the kernel to back its arrays of 4 MiB and more with huge pages (its default)."""
    try:
        from numpy._core.multiarray import _set_madvise_hugepage
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _set_madvise_hugepage
    _set_madvise_hugepage(enabled)


def tune_allocator() -> None:
    """Tune memory allocation for a process that assesses volumes (the CLI, batch workers), not a host
    application: the settings are process-wide.

    - glibc's heap reuses freed blocks up to ALLOCATOR_THRESHOLD instead of returning each to the OS (mmap and trim
      thresholds; skipped without glibc). A network's activations (tens of MiB per layer and batch) and per-slab
      temporaries are otherwise mapped fresh and faulted in page by page on every batch: measured here, that kernel
      time was as large as the inference itself. The memory a stage frees is given back at its end instead
      (``release_free_memory``).
    - One malloc arena for every thread: the slab threads' freed temporaries are reused by the other threads
      instead of each thread's arena keeping its own high-water mark (measured: the lung mask's peak RSS 40 MiB
      lower); the arrays are large and few, so threads hardly wait for the arena's lock.
    - numpy's huge-page advice is turned off: on a VM whose free memory goes back to its host, a huge page costs
      far more to fault in than its 512 small pages (measured on the 2-core VM: 600 MB of new array 4-5 s of system
      time with the advice, 0.3 s without); the arrays here are read once, so TLB misses cost little.
    """
    _set_numpy_huge_pages(False)
    trim = _malloc_trim()
    if trim is None:
        return
    mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    mallopt(_M_ARENA_MAX, 1)
    for threshold in (ALLOCATOR_THRESHOLD, 32 << 20):  # newer glibc caps the mmap threshold at 32 MiB
        if mallopt(_M_MMAP_THRESHOLD, threshold):
            mallopt(_M_TRIM_THRESHOLD, threshold)
            return


def release_free_memory() -> None:
    """Give the heap's free pages back to the OS (glibc malloc_trim; a no-op elsewhere). After a stage that made
    many mid-sized temporaries (network activations, per-slab arrays), glibc keeps their freed pages in the process
    (its mmap threshold grows to 32 MiB after the first large free), so they would count in the next stage's peak."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


#: Most bytes handed to the kernel in one write to a file. The page cache of a larger write is allocated as large
#: folios (2 MiB and up), which on a VM whose free memory goes back to its host cost about 30x more per byte than
#: small pages (measured on the 2-core VM: 600 MB written in 8 MiB writes 6-7 s of system time, in 1 MiB writes
#: 0.2 s; reading it back costs the same either way).
WRITE_PIECE_BYTES = 1 << 20


def write_pieces(data) -> Iterator[memoryview]:
    """The bytes of data (a contiguous ndarray or any bytes-like object) as consecutive memoryviews of at most
    WRITE_PIECE_BYTES: write them one write call each (no copy)."""
    view = memoryview(data.reshape(-1) if isinstance(data, np.ndarray) else data).cast("B")  # (0, n) arrays too
    for start in range(0, len(view), WRITE_PIECE_BYTES):
        yield view[start : start + WRITE_PIECE_BYTES]


def staging_dir() -> str | None:
    """Folder of the staging files: CTQA_STAGING_DIR when set, else None (tempfile's default, TMPDIR)."""
    return os.environ.get("CTQA_STAGING_DIR") or None


class SlabMap(NDArrayOperatorsMixin):
    """A read-only (z, y, x) array whose slabs are read on demand (module docstring). Subclasses define read()."""

    def __init__(self, shape: tuple[int, ...], dtype) -> None:
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)

    def read(self, start: int, stop: int) -> np.ndarray:
        """A new (or private) ndarray of slices start..stop (0 <= start <= stop <= depth)."""
        raise NotImplementedError

    # --- ndarray-like attributes -------------------------------------------------------------------------------
    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.shape}, dtype={self.dtype})"

    def slabs(self, slices: int = READ_SLICES) -> Iterator[tuple[int, np.ndarray]]:
        """(start, slab) of consecutive slabs of at most `slices` slices."""
        for start in range(0, self.shape[0], slices):
            yield start, self.read(start, min(start + slices, self.shape[0]))

    def __iter__(self) -> Iterator[np.ndarray]:
        for _, slab in self.slabs():
            yield from slab

    def __getitem__(self, key):
        depth = self.shape[0]
        if isinstance(key, (int, np.integer)):
            index = int(key) + depth if key < 0 else int(key)
            if not 0 <= index < depth:
                raise IndexError(f"index {key} is out of bounds for axis 0 with size {depth}")
            return self.read(index, index + 1)[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(depth)
            if step == 1:
                return self.read(start, max(start, stop))
            return np.asarray(self)[key]
        if (
            isinstance(key, tuple)
            and key
            and isinstance(key[0], (int, np.integer, slice))
            and not any(part is Ellipsis for part in key)
        ):
            head = self[key[0]]
            rest = key[1:]
            return head[rest] if isinstance(key[0], (int, np.integer)) else head[(slice(None), *rest)]
        return np.asarray(self)[key]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = np.empty(self.shape, dtype=self.dtype)
        for start, slab in self.slabs():
            whole[start : start + len(slab)] = slab
        return whole if dtype is None else whole.astype(dtype, copy=False)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        inputs = tuple(np.asarray(value) if isinstance(value, SlabMap) else value for value in inputs)
        if "out" in kwargs:
            kwargs["out"] = tuple(np.asarray(v) if isinstance(v, SlabMap) else v for v in kwargs["out"])
        return getattr(ufunc, method)(*inputs, **kwargs)

    def __getattr__(self, name: str):
        """ndarray methods (mean, any, copy, astype, ravel, ...) on the materialised array."""
        if name.startswith("_"):
            raise AttributeError(name)
        if not hasattr(np.ndarray, name):
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")
        return getattr(np.asarray(self), name)

    def __reduce__(self):  # pickled (a process boundary) as the plain array it stands for
        return np.asarray, (np.asarray(self),)


class StagedMap(SlabMap):
    """A (z, y, x) map in an anonymous temporary file, written slab by slab (``write``) in any order and from any
    thread; slices never written read as zeros (use ``fill`` first for another background)."""

    def __init__(self, shape: tuple[int, ...], dtype=np.float32, directory: str | None = None) -> None:
        super().__init__(shape, dtype)
        self._slice_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        self._file = tempfile.TemporaryFile(prefix="ctqa-staging-", dir=directory or staging_dir())
        self._file.truncate(self.shape[0] * self._slice_bytes)
        self._fd = self._file.fileno()
        self._lock = threading.Lock()  # only where os.pread/os.pwrite are missing (Windows)

    def close(self) -> None:
        """Remove the staging file now (else when the map is garbage-collected)."""
        self._file.close()

    def write(self, start: int, values: np.ndarray) -> None:
        """Store values (n, y, x) as slices start..start+n."""
        data = np.ascontiguousarray(values, dtype=self.dtype)
        if data.shape[1:] != self.shape[1:] or not 0 <= start <= start + len(data) <= self.shape[0]:
            raise ValueError(f"slab of shape {data.shape} at {start} does not fit a map of shape {self.shape}")
        offset = start * self._slice_bytes
        if hasattr(os, "pwrite"):
            for piece in write_pieces(data):
                while piece:
                    written = os.pwrite(self._fd, piece, offset)
                    piece, offset = piece[written:], offset + written
            return
        with self._lock:
            self._file.seek(offset)
            for piece in write_pieces(data):
                self._file.write(piece)

    def read(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, *self.shape[1:]), dtype=self.dtype)
        buffer = memoryview(out.reshape(-1)).cast("B")
        offset = start * self._slice_bytes
        if hasattr(os, "preadv"):
            while buffer:
                count = os.preadv(self._fd, [buffer], offset)
                if count == 0:
                    raise OSError(f"staging file ended at byte {offset}")
                buffer, offset = buffer[count:], offset + count
            return out
        with self._lock:
            self._file.seek(offset)
            if self._file.readinto(buffer) != len(buffer):
                raise OSError(f"staging file ended before byte {offset + len(buffer)}")
        return out

    def fill(self, value) -> None:
        """Set every voxel to value."""
        plane = np.full((min(READ_SLICES, self.shape[0]), *self.shape[1:]), value, dtype=self.dtype)
        for start in range(0, self.shape[0], len(plane)):
            self.write(start, plane[: min(len(plane), self.shape[0] - start)])


class ComputedMap(SlabMap):
    """A (z, y, x) map whose slabs compute(start, stop) makes on each read (nothing is stored)."""

    def __init__(self, shape: tuple[int, ...], dtype, compute: Callable[[int, int], np.ndarray]) -> None:
        super().__init__(shape, dtype)
        self._compute = compute

    def read(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self._compute(start, stop), dtype=self.dtype)


class PackedMask(SlabMap):
    """A bool (z, y, x) mask held bit-packed along x (np.packbits): 1/8 byte per voxel; ``write`` slab by slab."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__(shape, bool)
        self._bits = np.zeros((*self.shape[:-1], (self.shape[-1] + 7) // 8), dtype=np.uint8)

    @classmethod
    def of(cls, mask: np.ndarray) -> PackedMask:
        packed = cls(np.shape(mask))
        for start in range(0, packed.shape[0], READ_SLICES):
            packed.write(start, mask[start : start + READ_SLICES])
        return packed

    def write(self, start: int, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=bool)
        self._bits[start : start + len(values)] = np.packbits(values, axis=-1)

    def read(self, start: int, stop: int) -> np.ndarray:
        return np.unpackbits(self._bits[start:stop], axis=-1, count=self.shape[-1]).view(bool)

    def any(self, axis=None) -> bool | np.ndarray:
        if axis is None:
            return bool(self._bits.any())
        return np.asarray(self).any(axis=axis)

    def slice_counts(self) -> np.ndarray:
        """(z,) int64 number of True voxels per slice."""
        return np.array([int(np.unpackbits(plane).sum()) for plane in self._bits], dtype=np.int64)
