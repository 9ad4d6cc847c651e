"""Fast, low-memory reading of 4-D NIfTI runs, block of volumes by block of volumes.

Reading a ``.nii.gz`` BOLD run is dominated by gzip decompression. nibabel reads it through
:mod:`gzip` (8 KiB reads, a separate CRC pass, and a full-size float array in memory);
:func:`iter_volume_blocks` instead inflates the file with :mod:`zlib` directly (zlib checks
the CRC itself) into one reused buffer of a few volumes, so a caller can reduce each block
while the file is being read and peak memory stays at one block (about 64 MiB) instead of the
whole run. On a 97x115x97x200 float32 run this read is about twice as fast as
``np.asarray(nib.load(path).dataobj)``.

Values are yielded *unscaled* (the on-disk dtype); apply :func:`data_scaling` yourself
(``slope * raw + inter``). For a linear reduction such as a mean it is cheaper to scale the
result than the data.
"""

from __future__ import annotations

import os
import queue
import struct
import threading
import zlib

try:  # ISA-L inflates 2-3x faster than zlib, bit-for-bit the same output; zlib is the fallback
    from isal import isal_zlib as _inflate_lib
except ImportError:  # pragma: no cover - isal is a declared dependency
    _inflate_lib = zlib
from collections.abc import Iterator

import nibabel as nib
import numpy as np

from bids_semantoks.errors import DataError, MissingInputError

__all__ = ["load_image", "image_name", "data_scaling", "iter_volume_blocks", "BLOCK_BYTES"]

#: Target size of one block of volumes yielded by :func:`iter_volume_blocks`.
BLOCK_BYTES = 64 * 2**20
_IN_BYTES = 2**20  # compressed bytes read per call
_OUT_PIECE = 2**20  # decompressed bytes produced per zlib call (stays in cache, reused by malloc)


def image_name(img) -> str:
    """Return a short name for an image (its file name, or ``"<in-memory image>"``).

    Parameters
    ----------
    img : str, os.PathLike, nibabel image or numpy.ndarray
        The object to name.

    Returns
    -------
    str
        The file path when there is one, else a placeholder.
    """
    if isinstance(img, (str, os.PathLike)):
        return os.fspath(img)
    get = getattr(img, "get_filename", None)
    name = get() if get is not None else None
    if name:
        return str(name)
    return "<in-memory array>" if isinstance(img, np.ndarray) else "<in-memory image>"


def load_image(img, what: str = "image"):
    """Return a nibabel image for a path or an image (images pass through unchanged).

    Parameters
    ----------
    img : str, os.PathLike or nibabel image
        A NIfTI path or an already loaded image. Data are not read (nibabel is lazy).
    what : str
        What the image is, for the error message (``"BOLD"``, ``"atlas"``, ``"mask"``).

    Returns
    -------
    nibabel.spatialimages.SpatialImage

    Raises
    ------
    MissingInputError
        The path does not exist.
    DataError
        The file cannot be read as an image, or ``img`` is neither a path nor an image.
    """
    if isinstance(img, (str, os.PathLike)):
        path = os.fspath(img)
        if not os.path.exists(path):
            raise MissingInputError(f"{path}: {what} file not found; check the path")
        try:
            return nib.load(path)
        except Exception as exc:  # nibabel raises many types for a bad file
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(f"{path}: cannot read the {what} image ({msg}); replace the file") from exc
    if hasattr(img, "dataobj") and hasattr(img, "affine") and hasattr(img, "shape"):
        return img
    raise DataError(
        f"{image_name(img)}: expected a NIfTI path or a nibabel image for the {what}, "
        f"got {type(img).__name__}"
    )


def data_scaling(img) -> tuple[float, float]:
    """Return ``(slope, inter)`` that map stored values to data values.

    Parameters
    ----------
    img : nibabel image or numpy.ndarray
        For a file-backed image these are the header's ``scl_slope``/``scl_inter`` as nibabel
        interprets them (a 0 or NaN slope means no scaling). An in-memory array (or an image
        wrapping one) is already scaled: ``(1.0, 0.0)``.

    Returns
    -------
    tuple of float
    """
    dataobj = getattr(img, "dataobj", None)
    if dataobj is not None and nib.is_proxy(dataobj):
        slope = float(np.asarray(getattr(dataobj, "slope", 1.0)))
        inter = float(np.asarray(getattr(dataobj, "inter", 0.0)))
        return slope, inter
    return 1.0, 0.0


def _gzip_proxy(img):
    """Return (path, offset, dtype) when ``img`` is a plain gzip-compressed file on disk."""
    dataobj = getattr(img, "dataobj", None)
    if dataobj is None or not nib.is_proxy(dataobj):
        return None
    path = getattr(dataobj, "file_like", None)
    if not isinstance(path, (str, os.PathLike)):
        return None
    if getattr(dataobj, "order", "F") != "F" or len(dataobj.shape) != 4:
        return None
    try:
        with open(path, "rb") as f:
            if f.read(2) != b"\x1f\x8b":
                return None
    except OSError:
        return None
    return os.fspath(path), int(dataobj.offset), np.dtype(dataobj.dtype)


class _GzipProducer(threading.Thread):
    """Inflate a gzip file (raw deflate, all members) into a queue of pieces.

    Messages: ``("data", bytes)``, ``("end", crc32, isize)`` after each member,
    ``("eof",)`` at the end of the file, ``("error", exc)``. The CRC is *not* computed here:
    the consumer does it in parallel (zlib releases the GIL for both).
    """

    def __init__(self, path: str, maxsize: int = 32):
        super().__init__(name=f"inflate:{os.path.basename(path)}", daemon=True)
        self.path = path
        self.queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self.stop = threading.Event()

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run(self):  # noqa: D102
        try:
            with open(self.path, "rb") as f:
                self._inflate(f)
            self._put(("eof",))
        except Exception as exc:  # handed to the consumer
            self._put(("error", exc))

    def _inflate(self, f):
        pend = b""
        first = True
        while not self.stop.is_set():
            pend, hdr_len = _read_gzip_header(f, pend, self.path, first)
            if hdr_len is None:
                return  # end of file (or zero padding) after a member
            first = False
            pend = pend[hdr_len:]
            d = _inflate_lib.decompressobj(-15)
            while not d.eof:
                if self.stop.is_set():
                    return
                if not pend:
                    pend = f.read(_IN_BYTES)
                    if not pend:
                        raise DataError(
                            f"{self.path}: file is truncated (gzip stream ends early); "
                            "re-create or re-download the file"
                        )
                try:
                    out = d.decompress(pend, _OUT_PIECE)
                except (zlib.error, _inflate_lib.error) as exc:
                    raise DataError(
                        f"{self.path}: corrupt gzip data ({exc}); re-create or re-download the file"
                    ) from exc
                pend = d.unconsumed_tail
                if out and not self._put(("data", out)):
                    return
            pend = d.unused_data
            while len(pend) < 8:
                more = f.read(_IN_BYTES)
                if not more:
                    raise DataError(
                        f"{self.path}: file is truncated (gzip trailer missing); "
                        "re-create or re-download the file"
                    )
                pend += more
            crc, isize = struct.unpack("<II", pend[:8])
            pend = pend[8:]
            if not self._put(("end", crc, isize)):
                return


def _read_gzip_header(f, pend: bytes, path: str, first: bool):
    """Return (pending bytes, header length) or (pending, None) at a clean end of file."""

    def need(n):
        nonlocal pend
        while len(pend) < n:
            more = f.read(_IN_BYTES)
            if not more:
                return False
            pend += more
        return True

    if not need(1):
        if first:
            raise DataError(f"{path}: empty gzip file; re-create or re-download the file")
        return pend, None
    if not first and not need(2) or pend[:2] != b"\x1f\x8b":
        if not first and not pend.strip(b"\0") and not f.read(1):
            return pend, None  # trailing zero padding, as gzip tolerates
        if not first:
            raise DataError(f"{path}: trailing garbage after the gzip data; re-create the file")
        raise DataError(f"{path}: not a gzip file; re-create or re-download the file")
    bad = DataError(f"{path}: truncated or invalid gzip header; re-create or re-download the file")
    if not need(10) or pend[2] != 8:
        raise bad
    flg = pend[3]
    pos = 10
    if flg & 4:  # FEXTRA
        if not need(pos + 2):
            raise bad
        (xlen,) = struct.unpack("<H", pend[pos : pos + 2])
        pos += 2 + xlen
    for bit in (8, 16):  # FNAME, FCOMMENT: zero-terminated
        if flg & bit:
            while True:
                if not need(pos + 1):
                    raise bad
                z = pend.find(b"\0", pos)
                if z >= 0:
                    pos = z + 1
                    break
                if not need(len(pend) + 1):
                    raise bad
    if flg & 2:  # FHCRC
        pos += 2
    if not need(pos):
        raise bad
    return pend, pos


def _stream_gzip(path: str, offset: int, out_nbytes: int) -> Iterator[memoryview]:
    """Yield decompressed pieces of ``path`` from byte ``offset`` on, ``out_nbytes`` in all.

    Inflation runs in a helper thread; this generator checks every member's CRC-32 and size
    (after the last piece is yielded, before it returns). Raises DataError on a corrupt,
    truncated or non-gzip file.
    """
    producer = _GzipProducer(path)
    producer.start()
    skip = offset
    remaining = out_nbytes
    crc = 0
    size = 0
    try:
        while True:
            msg = producer.queue.get()
            kind = msg[0]
            if kind == "data":
                piece = msg[1]
                crc = _inflate_lib.crc32(piece, crc)
                size += len(piece)
                if remaining <= 0:
                    continue
                mv = memoryview(piece)
                if skip:
                    n = min(skip, len(mv))
                    mv = mv[n:]
                    skip -= n
                if len(mv) > remaining:
                    mv = mv[:remaining]
                remaining -= len(mv)
                if len(mv):
                    yield mv
            elif kind == "end":
                if msg[1] != crc or msg[2] != (size & 0xFFFFFFFF):
                    raise DataError(
                        f"{path}: gzip CRC or length check failed (corrupt file); "
                        "re-create or re-download it"
                    )
                crc = 0
                size = 0
            elif kind == "eof":
                break
            else:
                raise msg[1]
    finally:
        producer.stop.set()
        producer.join()
    if remaining > 0:
        raise DataError(
            f"{path}: file is truncated ({remaining} bytes of image data missing); "
            "re-create or re-download the file"
        )


def iter_volume_blocks(img, block_bytes: int = BLOCK_BYTES) -> Iterator[tuple[int, np.ndarray]]:
    """Iterate over a 4-D image (or array) in blocks of consecutive volumes.

    Parameters
    ----------
    img : nibabel image or numpy.ndarray
        A 4-D image (file-backed or in memory) or a 4-D array.
    block_bytes : int
        Approximate size of one block; at least one volume per block.

    Yields
    ------
    t0 : int
        Index of the first volume in the block.
    block : numpy.ndarray
        Shape ``(X, Y, Z, k)``, stored (unscaled, see :func:`data_scaling`) values. For a gzip
        file the block is a Fortran-ordered view of a buffer that is *reused*: it is valid only
        until the next iteration, and must not be modified.

    Raises
    ------
    DataError
        The image is not 4-D, or the file is corrupt or truncated.
    """
    shape = tuple(int(s) for s in img.shape)
    if len(shape) != 4:
        raise DataError(f"{image_name(img)}: expected a 4-D image, got shape {shape}")
    nx, ny, nz, nt = shape
    gz = _gzip_proxy(img) if not isinstance(img, np.ndarray) else None
    if gz is None:
        if isinstance(img, np.ndarray):
            arr = img
        else:
            dataobj = img.dataobj
            if nib.is_proxy(dataobj):
                # uncompressed files come back memory-mapped: slicing below reads lazily
                arr = np.asanyarray(dataobj.get_unscaled())
            else:
                arr = np.asanyarray(dataobj)
        vol_bytes = max(1, nx * ny * nz * arr.dtype.itemsize)
        k = max(1, int(block_bytes // vol_bytes))
        for t0 in range(0, nt, k):
            yield t0, arr[..., t0 : t0 + k]
        return

    path, offset, dtype = gz
    vol_bytes = nx * ny * nz * dtype.itemsize
    k = max(1, min(nt, int(block_bytes // max(vol_bytes, 1))))
    buf = np.empty(k * vol_bytes, dtype=np.uint8)
    fill = 0
    t0 = 0
    for piece in _stream_gzip(path, offset, nt * vol_bytes):
        n = len(piece)
        pos = 0
        while pos < n:
            take = min(n - pos, buf.size - fill)
            buf[fill : fill + take] = np.frombuffer(piece, dtype=np.uint8, count=take, offset=pos)
            fill += take
            pos += take
            if fill == buf.size:
                kk = min(k, nt - t0)
                yield t0, _as_block(buf, dtype, (nx, ny, nz, kk))
                t0 += kk
                fill = 0
                if nt - t0 < k and t0 < nt:
                    buf = buf[: (nt - t0) * vol_bytes]
    if t0 < nt:  # pragma: no cover - _stream_gzip raises on a short file
        raise DataError(f"{path}: file is truncated; re-create or re-download the file")


def _as_block(buf: np.ndarray, dtype: np.dtype, shape) -> np.ndarray:
    block = np.ndarray(shape, dtype=dtype, buffer=buf, order="F")
    block.flags.writeable = False
    return block
