"""``MANIFEST``: what the WAL must contain, recorded outside the WAL.

The WAL can check itself for damage *inside* a file (checksums, a gap in the
segment numbers), but not for a file or a tail that is simply gone: a lost
newest segment, a lost ``wal/`` directory, or a segment cut short at a record
boundary all read back as a valid, shorter log, and a 1-node cluster would
silently forget acknowledged writes. So the data directory keeps a small
text file next to ``wal/``::

    pyraftkv-manifest 1
    newest 00000000000000000007-00000000000000012345.wal 4312
    sealed 00000000000000000006-00000000000000011002.wal 4194405
    crc32 1a2b3c4d

* ``newest NAME BYTES``: the newest segment, and how many of its leading
  bytes were durable when the file was written (a floor: the segment only
  grows after that). ``newest - 0`` before the first segment exists.
* ``sealed NAME BYTES``: the final size of each older live segment.
* ``crc32``: zlib CRC-32 (hex) of every byte before that line.

It is replaced atomically (``fileio.write_atomic``) only off the hot path,
so group commit stays one fdatasync per ``Ready``: when a segment is created
(after its ``BASE`` record and its name are durable, before it takes any
batch), after a snapshot or a compaction, at open and at a clean close. The
floor of the newest segment therefore lags; what it vouches for is exact.

Invariants the checks rely on (see ``raft/wal.py`` for where they hold):

* the ``newest`` segment existed durably before the manifest named it, so if
  it is missing it was lost; a segment *newer* than ``newest`` can exist
  (a crash between its creation and the manifest update) and is fine;
* a sealed segment never changes size;
* the manifest exists only once ``wal/`` does (the data dir is synced first).
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

from raft.fileio import FileSystem, write_atomic
from raft.storage import StorageError

__all__ = [
    "MANIFEST_NAME",
    "CorruptManifestError",
    "Manifest",
    "MissingDurableStateError",
    "load_manifest",
    "save_manifest",
]

MANIFEST_NAME = "MANIFEST"
_MAGIC = "pyraftkv-manifest 1"
_SEGMENT = re.compile(r"^\d{20}-\d{20}\.wal$")


class MissingDurableStateError(StorageError):
    """Durable state the manifest (or the data dir) vouches for is gone:
    a segment, the ``wal/`` directory, or bytes of a segment. Starting would
    silently lose acknowledged writes, so the node must not start."""


class CorruptManifestError(StorageError):
    """The manifest file itself is unreadable."""


@dataclass(frozen=True, slots=True)
class Manifest:
    """Names are segment file names (``wal.segment_name``); sizes in bytes."""

    #: The newest segment's name, "" before the first segment exists.
    newest: str = ""
    #: How many leading bytes of ``newest`` are known durable (a floor).
    newest_durable: int = 0
    #: ``(name, final size)`` of every older live segment, oldest first.
    sealed: tuple[tuple[str, int], ...] = ()

    def encode(self) -> bytes:
        lines = [_MAGIC, f"newest {self.newest or '-'} {self.newest_durable}"]
        lines += [f"sealed {name} {size}" for name, size in self.sealed]
        body = "".join(line + "\n" for line in lines).encode()
        return body + f"crc32 {zlib.crc32(body):08x}\n".encode()

    @staticmethod
    def decode(data: bytes, where: str) -> Manifest:
        """Parse ``data``; ``CorruptManifestError`` (naming ``where``) if bad."""
        def bad(why: str) -> CorruptManifestError:
            return CorruptManifestError(
                f"{where} is damaged ({why}); it records which WAL files must exist, "
                "delete it only to open the data dir without those checks"
            )

        cut = data.rfind(b"crc32 ")
        if cut < 0 or not data.endswith(b"\n"):
            raise bad("no checksum line")
        body = data[:cut]
        try:
            crc = int(data[cut + 6 :].decode("ascii").strip(), 16)
        except (UnicodeDecodeError, ValueError):
            raise bad("unreadable checksum") from None
        if zlib.crc32(body) != crc:
            raise bad("checksum mismatch")
        lines = body.decode("ascii", "replace").splitlines()
        if not lines or lines[0] != _MAGIC:
            raise bad("unknown format")
        newest, durable = "", 0
        sealed: list[tuple[str, int]] = []
        try:
            for line in lines[1:]:
                key, name, size = line.split(" ")
                if name != "-" and not _SEGMENT.match(name):
                    raise ValueError(name)
                if key == "newest":
                    newest, durable = ("" if name == "-" else name), int(size)
                elif key == "sealed":
                    sealed.append((name, int(size)))
                else:
                    raise ValueError(key)
        except ValueError:
            raise bad(f"bad line {line!r}") from None
        return Manifest(newest, durable, tuple(sealed))


def load_manifest(fs: FileSystem, path: str) -> Manifest | None:
    """The manifest at ``path``, or None if there is none (a new data dir, or
    one written by a release before manifests). Raises
    ``CorruptManifestError``, ``OSError``."""
    try:
        data = fs.read(path)
    except FileNotFoundError:
        return None
    return Manifest.decode(data, path)


def save_manifest(fs: FileSystem, path: str, manifest: Manifest, *, fsync: bool) -> None:
    """Atomically replace the manifest (two fsyncs). Raises ``OSError``."""
    write_atomic(fs, path, manifest.encode(), fsync=fsync)
