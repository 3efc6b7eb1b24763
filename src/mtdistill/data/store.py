"""Packed, sharded data store: one HDF5 file per shard, one JSON index.

Layout of a store folder::

    index.json                 {"format": "mtdistill-store/1", "shards": [...], "utterances": [...], "skipped": [...]}
    shards/shard-00000.h5      group /u/<key>: frames (n, 48, 96, 3) uint8 RGB lower-half mouth crops,
                                               valid (n,) bool, audio (S,) int16 at 16 kHz (x / 32768 -> float)
    shards/shard-00000.json    the shard's own entries (written after the .h5: a shard counts as done
                               only when its sidecar exists, which is what makes `prepare` resumable)
    skipped.csv                inputs that produced nothing, with the reason

By default the datasets are contiguous and uncompressed: readers memory-map the shard and a random 5-frame
window is one slice of the mapped file (no HDF5 call on the hot path). With compression ("lzf", "gzip") frames
are chunked 5 per chunk (one model window), so a window still reads only one or two small chunks.
Audio is int16: exactly what a 16-bit wav holds (the official loaders read 16-bit wavs), half of float32.

h5py handles are opened lazily and re-opened after fork (DataLoader workers), never shared across processes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import h5py
import numpy as np

from mtdistill.core.errors import UserError
from mtdistill.core.timing import WINDOW_FRAMES, WINDOW_SAMPLES

FORMAT = "mtdistill-store/1"
CROP_SHAPE = (48, 96, 3)
FRAME_CHUNK = WINDOW_FRAMES  # one model window per HDF5 chunk
AUDIO_CHUNK = WINDOW_SAMPLES * 4
SPLITS = ("pretrain", "train", "val", "test")


def content_sha256(frames: np.ndarray, valid: np.ndarray, audio_i16: np.ndarray) -> str:
    """Checksum of what an utterance holds (frames, valid mask, int16 audio), independent of HDF5 layout."""
    h = hashlib.sha256()
    for arr in (frames, valid.astype(np.bool_), audio_i16):
        a = np.ascontiguousarray(arr)
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def audio_to_int16(audio: np.ndarray) -> np.ndarray:
    """float [-1, 1] -> int16 (round to nearest, clipped); int16 input is kept as is."""
    a = np.asarray(audio)
    if a.dtype == np.int16:
        return a
    return np.clip(np.round(a.astype(np.float64) * 32768.0), -32768, 32767).astype(np.int16)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class ShardWriter:
    """Write one shard atomically: everything goes to a temporary file that is renamed on close()."""

    def __init__(self, path: str | Path, compression: str | None = None) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        self.compression = compression
        self._h5 = h5py.File(self.tmp, "w")
        self._h5.attrs["format"] = FORMAT
        self.entries: list[dict] = []

    def add(self, key: str, frames: np.ndarray, valid: np.ndarray, audio: np.ndarray, **meta: object) -> dict:
        """Add one utterance; returns its index entry (n_frames, n_samples, sha256, key + meta)."""
        frames = np.ascontiguousarray(frames, dtype=np.uint8)
        if frames.ndim != 4 or frames.shape[1:] != CROP_SHAPE:
            raise ValueError(f"frames must be (n, 48, 96, 3) uint8, got {frames.shape}")
        valid = np.asarray(valid, dtype=np.bool_)
        if valid.shape != (frames.shape[0],):
            raise ValueError(f"valid must be ({frames.shape[0]},), got {valid.shape}")
        audio16 = audio_to_int16(audio)
        g = self._h5.create_group(f"u/{key}")
        n, s = frames.shape[0], audio16.shape[0]
        if self.compression and n and s:
            g.create_dataset(
                "frames", data=frames, chunks=(min(FRAME_CHUNK, n), *CROP_SHAPE), compression=self.compression
            )
            g.create_dataset("audio", data=audio16, chunks=(min(AUDIO_CHUNK, s),), compression=self.compression)
        else:  # contiguous: readers map these bytes straight from the file (no HDF5 call per window)
            g.create_dataset("frames", data=frames)
            g.create_dataset("audio", data=audio16)
        g.create_dataset("valid", data=valid)
        entry = {
            "key": key,
            "n_frames": int(n),
            "n_samples": int(s),
            "n_valid": int(valid.sum()),
            "sha256": content_sha256(frames, valid, audio16),
            **meta,
        }
        self.entries.append(entry)
        return entry

    def close(self) -> str:
        """Finish the file, rename it into place and return its sha256."""
        self._h5.close()
        os.replace(self.tmp, self.path)
        return file_sha256(self.path)

    def abort(self) -> None:
        try:
            self._h5.close()
        finally:
            if self.tmp.exists():
                self.tmp.unlink()


def shard_name(shard_id: int) -> str:
    return f"shard-{shard_id:05d}"


def read_sidecars(root: Path) -> list[dict]:
    """Every finished shard's sidecar (shards/shard-*.json), sorted by shard id."""
    out = []
    for p in sorted((root / "shards").glob("shard-*.json")):
        try:
            out.append(json.loads(p.read_text()))
        except (OSError, json.JSONDecodeError):
            continue  # a sidecar is written atomically; an unreadable one means someone else broke it
    return sorted(out, key=lambda s: s["id"])


def build_index(root: Path, extra: dict | None = None) -> dict:
    """index.json content from the sidecars (the sidecars are the truth; the index is a cache of them)."""
    shards, utterances, skipped = [], [], []
    for side in read_sidecars(root):
        if side.get("file"):  # a shard whose inputs were all skipped has a sidecar but no file
            shards.append({k: side[k] for k in ("id", "file", "sha256", "n_utterances")})
        for e in side["utterances"]:
            utterances.append({**e, "shard": side["id"]})
        skipped.extend(side.get("skipped", []))
    return {"format": FORMAT, **(extra or {}), "shards": shards, "utterances": utterances, "skipped": skipped}


def write_index(root: Path, index: dict) -> None:
    atomic_write_text(root / "index.json", json.dumps(index, indent=0, sort_keys=False) + "\n")


class Store:
    """Read access to a packed store (see the module docstring for the layout)."""

    def __init__(self, root: Path, index: dict, shard_ids: Iterable[int] | None = None) -> None:
        self.root = root
        self.index = index
        allowed = None if shard_ids is None else {int(s) for s in shard_ids}
        self.shards = {s["id"]: s for s in index["shards"] if allowed is None or s["id"] in allowed}
        self._entries: dict[str, dict] = {}
        for e in index["utterances"]:
            if e["shard"] in self.shards:
                self._entries[e["uid"]] = e
        self._files: dict[int, h5py.File] = {}
        self._maps: dict[int, np.ndarray] = {}
        self._cache: dict[str, tuple] = {}
        self._pid = os.getpid()

    # ------------------------------------------------------------------------------------------ opening

    @classmethod
    def open(cls, path: str | os.PathLike, shard_ids: Iterable[int] | None = None) -> Store:
        """Open a store folder (or its index.json); shard_ids restricts it to those shards (one DDP rank)."""
        root = Path(path)
        if root.name == "index.json":
            root = root.parent
        index_path = root / "index.json"
        if not index_path.exists():
            if (root / "shards").is_dir():  # killed before the first index write: the sidecars still tell
                return cls(root, build_index(root), shard_ids)
            raise FileNotFoundError(f"no store at {root} (index.json missing); run `mtdistill prepare SRC {root}`")
        try:
            index = json.loads(index_path.read_text())
        except json.JSONDecodeError:
            raise UserError(f"{index_path} is not valid JSON; rerun `mtdistill prepare` to rebuild it") from None
        if index.get("format") != FORMAT:
            raise UserError(f"{root} is not a {FORMAT} store (format {index.get('format')!r}); re-run prepare")
        return cls(root, index, shard_ids)

    def __getstate__(self) -> dict:  # picklable for spawn-based DataLoader workers: no open handles
        state = self.__dict__.copy()
        state["_files"], state["_maps"], state["_cache"] = {}, {}, {}
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()

    def _file(self, shard: int) -> h5py.File:
        self._check_pid()
        f = self._files.get(shard)
        if f is None:
            path = self.shard_path(shard)
            try:
                f = h5py.File(path, "r")
            except FileNotFoundError:
                raise UserError(f"shard {path} is missing; rerun `mtdistill prepare` to rebuild the store") from None
            except OSError as exc:  # truncated, or not HDF5 at all
                raise damaged_shard(path, exc) from None
            self._files[shard] = f
        return f

    def shard_path(self, shard: int) -> Path:
        return self.root / "shards" / self.shards[shard]["file"]

    def check_shards(self, uids: Iterable[str] | None = None) -> None:
        """Open every shard holding ``uids`` (all by default) and find each utterance's data in it; a missing,
        truncated or corrupt shard raises a UserError that names it. Cheap: no frame or audio is read."""
        wanted = self._entries if uids is None else {u: self._entries[u] for u in uids if u in self._entries}
        by_shard: dict[int, list[dict]] = {}
        for e in wanted.values():
            by_shard.setdefault(e["shard"], []).append(e)
        for shard, entries in sorted(by_shard.items()):
            f = self._file(shard)
            size = self.shard_path(shard).stat().st_size
            for e in entries:
                try:
                    g = f["u"][e["key"]]
                    for name in ("frames", "audio", "valid"):
                        ds = g[name]
                        offset = ds.id.get_offset()
                        if offset is not None and offset + ds.id.get_storage_size() > size:
                            raise OSError(f"dataset {name} of {e['key']} ends beyond the end of the file")
                except (KeyError, OSError, RuntimeError, ValueError) as exc:
                    raise damaged_shard(self.shard_path(shard), exc) from None

    def _check_pid(self) -> None:
        if self._pid != os.getpid():  # forked: the parent's HDF5 handles must not be used here
            self._files, self._maps, self._cache = {}, {}, {}
            self._pid = os.getpid()

    def close(self) -> None:
        if self._pid == os.getpid():
            for f in self._files.values():
                f.close()
        self._files, self._maps, self._cache = {}, {}, {}

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ queries

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, uid: str) -> bool:
        return uid in self._entries

    def ids(self, split: str | None = None, rank: int | None = None, world_size: int | None = None) -> list[str]:
        """Utterance ids (index order), optionally of one split and of one DDP rank's shards.

        With rank/world_size, shard k of the split belongs to rank k % world_size, so a rank opens only its own
        files. When the split has fewer shards than ranks, utterances are dealt round-robin instead (every rank
        gets some; each then reads from shared shards).
        """
        if split is not None and split not in SPLITS:
            raise UserError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        uids = [u for u, e in self._entries.items() if split is None or e["split"] == split]
        if world_size is None or world_size <= 1:
            return uids
        if rank is None or not 0 <= rank < world_size:
            raise UserError(f"rank must be in [0, {world_size}), got {rank}")
        shard_order = sorted({self._entries[u]["shard"] for u in uids})
        if len(shard_order) >= world_size:
            mine = set(shard_order[rank::world_size])
            return [u for u in uids if self._entries[u]["shard"] in mine]
        return uids[rank::world_size]

    def shard_ids(self) -> list[int]:
        return sorted(self.shards)

    def meta(self, uid: str) -> dict:
        """n_frames, n_samples, n_valid, split, source, shard, sha256, offset_frames (synthetic), note, ..."""
        try:
            return dict(self._entries[uid])
        except KeyError:
            raise KeyError(f"{uid!r} is not in the store {self.root}") from None

    def _group(self, uid: str) -> h5py.Group:
        e = self._entries.get(uid)
        if e is None:
            raise KeyError(f"{uid!r} is not in the store {self.root}")
        f = self._file(e["shard"])
        try:
            return f["u"][e["key"]]
        except (KeyError, OSError, RuntimeError) as exc:  # the index names data the shard does not hold intact
            raise damaged_shard(self.shard_path(e["shard"]), exc) from None

    def _arrays(self, uid: str) -> tuple[np.ndarray | h5py.Dataset, np.ndarray | h5py.Dataset]:
        """(frames, audio) of an utterance: read-only views of the memory-mapped shard for contiguous datasets,
        else the h5py datasets. Cached, so a random window costs one slice instead of HDF5 lookups."""
        self._check_pid()
        hit = self._cache.get(uid)
        if hit is not None:
            return hit
        g = self._group(uid)
        shard = self._entries[uid]["shard"]
        out = []
        for name in ("frames", "audio"):
            try:
                ds = g[name]
                offset = ds.id.get_offset() if ds.chunks is None and ds.compression is None else None
            except (KeyError, OSError, RuntimeError) as exc:
                raise damaged_shard(self.shard_path(shard), exc) from None
            if offset is None or ds.size == 0:
                out.append(ds)
                continue
            mapped = self._maps.get(shard)
            if mapped is None:
                # a plain ndarray view of the map: slicing a np.memmap subclass costs more than the copy itself
                mapped = np.memmap(self.root / "shards" / self.shards[shard]["file"], np.uint8, mode="r")
                mapped = mapped.view(np.ndarray)
                self._maps[shard] = mapped
            out.append(mapped[offset : offset + ds.size * ds.dtype.itemsize].view(ds.dtype).reshape(ds.shape))
        self._cache[uid] = (out[0], out[1])
        return out[0], out[1]

    def frames(self, uid: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """(n, 48, 96, 3) uint8 RGB lower-half mouth crops; frames with valid=False are zeros."""
        return np.array(self._arrays(uid)[0][start:stop], dtype=np.uint8)

    def audio(self, uid: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """float32 samples at 16 kHz in [-1, 1) (int16 / 32768, as soundfile reads a 16-bit wav)."""
        return np.asarray(self._arrays(uid)[1][start:stop], dtype=np.float32) / np.float32(32768.0)

    def valid(self, uid: str) -> np.ndarray:
        """(n_frames,) bool: False where face detection failed (explicit gaps)."""
        return self._group(uid)["valid"][()]

    def verify(self, uids: Sequence[str] | None = None) -> list[str]:
        """uids whose content no longer matches the checksum in the index (empty list = all good)."""
        bad = []
        for uid in uids if uids is not None else list(self._entries):
            g = self._group(uid)
            digest = content_sha256(g["frames"][()], g["valid"][()], g["audio"][()])
            if digest != self._entries[uid]["sha256"]:
                bad.append(uid)
        return bad


def damaged_shard(path: Path, exc: BaseException) -> UserError:
    """The one-line error for a shard that cannot be read as the index describes it."""
    reason = " ".join(str(exc).split())[:200] or type(exc).__name__
    return UserError(
        f"shard {path} is damaged (truncated or corrupt: {reason}); restore it, or rerun `mtdistill prepare` "
        "into a new folder"
    )


def open_store(path: str | Path) -> Store:
    if not Path(path).exists():
        raise UserError(f"data {path} not found; give a store folder made by `mtdistill prepare SRC OUT`")
    try:
        store = Store.open(path)
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from None
    if len(store) == 0:
        raise UserError(f"the store {path} holds no utterances; run `mtdistill prepare` on some videos first")
    return store
