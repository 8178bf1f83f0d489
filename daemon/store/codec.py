"""One chunk (or metadata blob) to bytes for the bucket, and back, verified.

Pure, thread-safe functions: the store runs them in a thread pool. zstandard contexts are not
shareable between threads, so each thread keeps its own; BLAKE3, zstd, AES-GCM and the numpy
byte grouping all release the GIL on chunk-sized buffers, so two threads use two cores.

Chunk blob, format version 1 (integers little-endian)::

    offset  size  field
    0       1     format version = 0x01
    1       12    nonce (random 96 bits)
    13      n+16  AES-256-GCM(data_key, nonce, inner, AAD) : n bytes of ciphertext, 16-byte tag
    AAD = b"gitmld/chunk\\0" + version byte + chunk id (32 bytes)

    inner (n bytes, encrypted):
    0       1     codec: 0 raw, 1 zstd, 2 byte-grouped
    1       4     plaintext length
    codec 0: the plaintext
    codec 1: one zstd frame (with its content size)
    codec 2: item size k (1 byte: 2 for bf16/f16, 4 for f32), then k plane entries of
             5 bytes (mode: 0 raw, 1 zstd; stored length u32), then the k planes in order.
             Plane i holds byte i (little-endian order) of every item: for bf16 plane 1 is
             sign + 7 exponent bits (compresses to ~0.34), plane 0 the noisy mantissa (raw).

Only the version and nonce are in the clear: the codec, plaintext length and per-plane sizes
are encrypted too, so the bucket does not learn how compressible each chunk is beyond the blob
length. The chunk id in the AAD binds a blob to its id: a blob stored under another id fails
authentication. decode_chunk also recomputes the keyed id of the plaintext.

Sealed blob (manifests, index segments, pack trailers), format version 1::

    0       1     format version = 0x01
    1       12    nonce
    13      n+16  AES-256-GCM(data_key, nonce, inner, AAD = b"gitmld/blob\\0" + version + kind)
    inner:  codec (0 raw, 1 zstd, level 3), plaintext length u64, payload

``kind`` (e.g. b"manifest", b"index") is not stored: a blob opened as another kind fails.
Nonces are random: with one data key per repository, 2^32 encryptions (~256 TiB of 64 KiB
chunks) keep the collision chance under 2^-32 (NIST SP 800-38D).
"""

from __future__ import annotations

import os
import secrets
import struct
import threading
from collections.abc import Callable
from typing import Any, NoReturn

import blake3
import numpy as np
import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .keys import RepoKeys

VERSION = 1
DEFAULT_LEVEL = 3
RAW, ZSTD, GROUPED = 0, 1, 2
_PLANE_RAW, _PLANE_ZSTD = 0, 1
ITEM_SIZES = {"bf16": 2, "f16": 2, "f32": 4}
_PLANE_DTYPES: dict[int, np.dtype[Any]] = {2: np.dtype("<u2"), 4: np.dtype("<u4")}
_NONCE = 12
_TAG = 16
_CHUNK_AAD = b"gitmld/chunk\0"
_BLOB_AAD = b"gitmld/blob\0"
_BLOB_LEVEL = 3
_MIN_COMPRESS = 64  # shorter inputs are stored raw: a zstd frame alone costs ~10 bytes
_SAMPLE = 4096  # a float plane whose first 4 KiB do not compress is stored raw without trying all


class CodecError(Exception):
    """Base of the codec errors."""


class CorruptChunk(CodecError):
    """A chunk blob failed verification; names the chunk id (hex prefix) and the failed check."""

    def __init__(self, cid: bytes, what: str) -> None:
        super().__init__(f"chunk {cid.hex()[:16]}: {what}")
        self.cid = cid


class CorruptBlob(CodecError):
    """A metadata blob failed verification."""


class UnsupportedVersion(CodecError):
    """The blob was written in a format version this gitmld does not know: a newer one wrote it."""


# -- per-thread zstd contexts ---------------------------------------------------------------

# Float planes are order-0 entropy: long matches are absent and short ones cost more than they
# save, so a fast match finder with min_match 7 and a tiny hash table beats every level (bench:
# bf16 exponent plane 0.34 at ~400 MB/s, vs level 1 0.38 at 210 MB/s, level 3 0.41 at 110 MB/s).
_PLANE_PARAMS = zstandard.ZstdCompressionParameters(
    window_log=17,
    hash_log=6,
    chain_log=6,
    search_log=1,
    min_match=7,
    target_length=0,
    strategy=zstandard.STRATEGY_FAST,
)
_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    """``level`` >= 1 is a zstd level; 0 means the float-plane parameters."""
    cache: dict[int, zstandard.ZstdCompressor] | None = getattr(_local, "compressors", None)
    if cache is None:
        cache = _local.compressors = {}
    cctx = cache.get(level)
    if cctx is None:
        if level == 0:
            cctx = zstandard.ZstdCompressor(compression_params=_PLANE_PARAMS)
        else:
            cctx = zstandard.ZstdCompressor(level=level)
        cache[level] = cctx
    return cctx


def _decompressor() -> zstandard.ZstdDecompressor:
    dctx: zstandard.ZstdDecompressor | None = getattr(_local, "decompressor", None)
    if dctx is None:
        dctx = _local.decompressor = zstandard.ZstdDecompressor()
    return dctx


def _pays(stored: int, plain: int) -> bool:
    """Compression must save at least 1/32 to be worth a decompression on every read."""
    return stored <= plain - plain // 32


def _zstd_or_none(data: bytes | memoryview, level: int, *, sample: bool = True) -> bytes | None:
    size = len(data)
    if size < _MIN_COMPRESS:
        return None
    cctx = _compressor(level)
    # Float planes are homogeneous, so a sample tells (the bf16 mantissa plane never pays); other
    # data may be random at the start and repetitive later, so it is always tried whole.
    if sample and level == 0 and size > 4 * _SAMPLE and not _pays(len(cctx.compress(data[:_SAMPLE])), _SAMPLE):
        return None
    packed = cctx.compress(data)
    return packed if _pays(len(packed), size) else None


def _unzstd(payload: bytes | memoryview, size: int) -> bytes:
    """Decompress one frame that must hold exactly ``size`` bytes (checked before allocating)."""
    declared = zstandard.frame_content_size(payload)
    if declared != size:
        raise ValueError(f"zstd frame declares {declared} bytes, expected {size}")
    out = _decompressor().decompress(payload)
    if len(out) != size:
        raise ValueError(f"zstd frame decompressed to {len(out)} bytes, expected {size}")
    return out


# -- chunk ids -------------------------------------------------------------------------------


def chunk_id(keys: RepoKeys, plain: bytes | memoryview) -> bytes:
    """32-byte keyed BLAKE3: object names in the bucket reveal no plaintext hash."""
    return blake3.blake3(plain, key=keys.id_key).digest()


# -- encoding --------------------------------------------------------------------------------


def _encode_inner(plain: bytes | memoryview, hint: str, level: int) -> list[bytes | memoryview]:
    size = len(plain)
    k = ITEM_SIZES.get(hint, 0)
    if k and size % k == 0 and size >= _MIN_COMPRESS:
        return _encode_grouped(plain, k)
    packed = _zstd_or_none(plain, level)
    if packed is None:
        return [struct.pack("<BI", RAW, size), plain]
    return [struct.pack("<BI", ZSTD, size), packed]


def _encode_grouped(plain: bytes | memoryview, k: int) -> list[bytes | memoryview]:
    items = np.frombuffer(plain, dtype=_PLANE_DTYPES[k])
    table = [struct.pack("<BIB", GROUPED, len(plain), k)]
    parts: list[bytes | memoryview] = []
    packed_any = False
    for i in range(k):
        # astype to uint8 keeps the low byte: shift first, never a strided copy (4x slower).
        plane = (items >> (8 * i) if i else items).astype(np.uint8).data
        # the top plane (sign and exponent) of real floats always compresses: no sample first
        packed = _zstd_or_none(plane, 0, sample=i < k - 1)
        if packed is None:
            table.append(struct.pack("<BI", _PLANE_RAW, len(plane)))
            parts.append(plane)
        else:
            table.append(struct.pack("<BI", _PLANE_ZSTD, len(packed)))
            parts.append(packed)
            packed_any = True
    if not packed_any:  # e.g. random or already-quantised values: raw is smaller and faster to read
        return [struct.pack("<BI", RAW, len(plain)), plain]
    return [b"".join(table), *parts]


def encode_chunk(keys: RepoKeys, cid: bytes, plain: bytes | memoryview, hint: str = "", level: int = DEFAULT_LEVEL,
                 aead: AESGCM | None = None) -> bytes:
    """Compress (raw / zstd / byte-grouped, whichever the hint says pays) and encrypt one chunk.

    Float hints always take the grouped path (on bf16 it stores ~0.67 where plain zstd stores
    0.78); other chunks try zstd at ``level`` and stay raw when it saves under 1/32. ``aead``:
    a cipher for keys.data_key made once per batch (its key schedule costs ~8 us per chunk).
    """
    if len(plain) >= 1 << 32:
        raise ValueError("a chunk must be smaller than 4 GiB")
    if len(cid) != 32:
        raise ValueError("a chunk id is 32 bytes")
    inner = b"".join(_encode_inner(plain, hint, level))
    nonce = os.urandom(_NONCE)
    head = bytes([VERSION])
    sealed = (aead or AESGCM(keys.data_key)).encrypt(nonce, inner, _CHUNK_AAD + head + cid)
    return head + nonce + sealed


# -- decoding --------------------------------------------------------------------------------


def decode_chunk(keys: RepoKeys, cid: bytes, blob: bytes | memoryview, aead: AESGCM | None = None, *,
                 verify_id: bool = True) -> bytes | memoryview:
    """The plaintext of a chunk blob, after checking the AEAD tag, the length and the keyed id.
    ``blob`` may be a view into a larger read (no copy); ``aead``: one cipher per batch.
    ``verify_id=False`` skips recomputing the keyed id (the AEAD tag, whose AAD holds the id,
    is always checked): for host-cache reads of a whole file, whose SHA-256 the caller checks."""
    if len(blob) < 1 + _NONCE + _TAG + 5:
        raise CorruptChunk(cid, f"blob truncated ({len(blob)} bytes)")
    aead = aead or AESGCM(keys.data_key)
    view = memoryview(blob)
    nonce, sealed = view[1 : 1 + _NONCE], view[1 + _NONCE :]
    if blob[0] != VERSION:
        _classify_bad_version(
            blob[0],
            "chunk",
            lambda: aead.decrypt(nonce, sealed, _CHUNK_AAD + bytes([VERSION]) + cid),
            lambda what: CorruptChunk(cid, what),
        )
    try:
        inner = aead.decrypt(nonce, sealed, _CHUNK_AAD + bytes(blob[:1]) + cid)
    except InvalidTag:
        raise CorruptChunk(
            cid,
            "authentication failed (the blob is damaged or truncated, belongs to another chunk, "
            "or was written with another repository key)",
        ) from None
    try:
        plain = _decode_inner(memoryview(inner))
    except (ValueError, struct.error, zstandard.ZstdError) as e:
        raise CorruptChunk(cid, f"bad payload: {e}") from None
    if verify_id and chunk_id(keys, plain) != cid:
        raise CorruptChunk(cid, "content does not match its id")
    return plain


def _classify_bad_version(
    version: int, what: str, try_v1: Callable[[], object], corrupt: Callable[[str], CodecError]
) -> NoReturn:
    """An unknown version byte: a damaged v1 blob (it authenticates as v1) or a newer format."""
    try:
        try_v1()
    except InvalidTag:
        raise UnsupportedVersion(
            f"{what} has format version {version}; this gitmld reads version {VERSION}: it was "
            f"written by a newer gitmld, upgrade to read it"
        ) from None
    raise corrupt(f"format version byte damaged ({version}, the content is version {VERSION})")


def _decode_inner(inner: memoryview) -> bytes | memoryview:
    codec, size = struct.unpack_from("<BI", inner)
    body = inner[5:]
    if codec == RAW:
        if len(body) != size:
            raise ValueError(f"raw payload has {len(body)} bytes, header says {size}")
        return bytes(body)
    if codec == ZSTD:
        return _unzstd(body, size)
    if codec == GROUPED:
        return _decode_grouped(body, size)
    raise ValueError(f"unknown codec {codec}")


def _decode_grouped(body: memoryview, size: int) -> memoryview:
    k = body[0]
    if k not in _PLANE_DTYPES or size % k:
        raise ValueError(f"bad item size {k} for {size} bytes")
    n = size // k
    pos = 1 + 5 * k
    dtype = _PLANE_DTYPES[k]
    planes = []
    for i in range(k):
        mode, stored = struct.unpack_from("<BI", body, 1 + 5 * i)
        payload = body[pos : pos + stored]
        if len(payload) != stored:
            raise ValueError("plane truncated")
        pos += stored
        if mode == _PLANE_RAW:
            if stored != n:
                raise ValueError(f"raw plane {i} has {stored} bytes, expected {n}")
            planes.append(np.frombuffer(payload, dtype=np.uint8))
        elif mode == _PLANE_ZSTD:
            planes.append(np.frombuffer(_unzstd(payload, n), dtype=np.uint8))
        else:
            raise ValueError(f"unknown plane mode {mode}")
    # Horner from the top plane down, in place: one array, no temporaries
    out = planes[-1].astype(dtype)
    for plane in reversed(planes[:-1]):
        out <<= 8
        out |= plane
    if pos != len(body):
        raise ValueError(f"{len(body) - pos} trailing bytes after the planes")
    return out.data.cast("B")  # the array's bytes, not a copy of them (~5% of a warm read)


# -- metadata blobs --------------------------------------------------------------------------


def seal_blob(keys: RepoKeys, kind: bytes, plain: bytes) -> bytes:
    """zstd + AES-256-GCM for manifests, index segments and pack trailers; ``kind`` in the AAD."""
    packed = _zstd_or_none(plain, _BLOB_LEVEL)
    inner = struct.pack("<BQ", RAW if packed is None else ZSTD, len(plain)) + (plain if packed is None else packed)
    nonce = secrets.token_bytes(_NONCE)
    head = bytes([VERSION])
    return head + nonce + AESGCM(keys.data_key).encrypt(nonce, inner, _BLOB_AAD + head + kind)


def open_blob(keys: RepoKeys, kind: bytes, blob: bytes) -> bytes:
    """The plaintext of a sealed blob of this ``kind``; CorruptBlob / UnsupportedVersion."""
    name = kind.decode("ascii", "replace")
    if len(blob) < 1 + _NONCE + _TAG + 9:
        raise CorruptBlob(f"{name} blob truncated ({len(blob)} bytes)")
    aead = AESGCM(keys.data_key)
    view = memoryview(blob)
    nonce, sealed = view[1 : 1 + _NONCE], view[1 + _NONCE :]
    if blob[0] != VERSION:
        _classify_bad_version(
            blob[0],
            f"{name} blob",
            lambda: aead.decrypt(nonce, sealed, _BLOB_AAD + bytes([VERSION]) + kind),
            CorruptBlob,
        )
    try:
        inner = memoryview(aead.decrypt(nonce, sealed, _BLOB_AAD + blob[:1] + kind))
    except InvalidTag:
        raise CorruptBlob(
            f"{name} blob failed authentication (damaged, truncated, not a {name}, or written with "
            f"another repository key)"
        ) from None
    try:
        codec, size = struct.unpack_from("<BQ", inner)
        body = inner[9:]
        if codec == RAW and len(body) == size:
            return bytes(body)
        if codec == ZSTD:
            return _unzstd(body, size)
        raise ValueError(f"codec {codec}, {len(body)} bytes for {size}")
    except (ValueError, struct.error, zstandard.ZstdError) as e:
        raise CorruptBlob(f"{name} blob has a bad payload: {e}") from None
