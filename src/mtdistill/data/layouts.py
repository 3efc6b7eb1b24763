"""Find the inputs of `prepare`: LRS2 raw, Wav2Lip-preprocessed, or any folder of videos.

* ``lrs2``: SRC/main/<speaker>/<utt>.mp4 and SRC/pretrain/<speaker>/<utt>.mp4 with the official lists
  pretrain/train/val/test.txt (in --split-lists DIR, SRC/filelists/ or SRC/). Lines are '<speaker>/<utt>'
  plus optional trailing tokens (test.txt has ' NF'); only the first token is used. The synthetic corpus of
  `mtdistill synth` has this layout (plus ground_truth.json with known offsets).
* ``wav2lip``: <root>/<speaker>/<utt>/{0.jpg, 1.jpg, ...} + audio.wav (optionally under main/ or pretrain/):
  tight face crops named by frame index, with gaps where detection failed.
* ``videos``: any other folder; every video file below it is one utterance (uid = relative path, no suffix).

Without lists, utterances under pretrain/ go to the "pretrain" split and everything else to "train" (or
to the split given with --split).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mtdistill.core.errors import UserError

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".flv", ".mpg", ".mpeg", ".m4v"}
LIST_SPLITS = ("pretrain", "train", "val", "test")


@dataclass(frozen=True)
class SourceItem:
    """One input utterance."""

    uid: str  # e.g. "5535415699068794046/00001"
    split: str
    kind: str  # "video" | "jpgdir"
    path: str  # the video file, or the folder of jpgs (audio.wav inside)


@dataclass
class Discovery:
    layout: str  # "lrs2" | "wav2lip" | "videos"
    items: list[SourceItem]
    missing: list[tuple[str, str, str]] = field(default_factory=list)  # (uid, split, reason) listed but absent
    notes: list[str] = field(default_factory=list)


def read_filelist(path: Path) -> list[str]:
    """uids of an LRS2 list: first whitespace token of every non-empty line ('spk/utt NF' -> 'spk/utt')."""
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def find_split_lists(src: Path, split_lists: str | os.PathLike | None) -> dict[str, list[str]]:
    """split -> uids from the first folder that holds any of {pretrain,train,val,test}.txt."""
    if split_lists is not None:
        folders = [Path(split_lists)]
        if not folders[0].is_dir():
            raise UserError(f"--split-lists {split_lists} is not a folder; give the folder holding train.txt etc.")
    else:
        folders = [src / "filelists", src]
    for folder in folders:
        found = {s: folder / f"{s}.txt" for s in LIST_SPLITS if (folder / f"{s}.txt").is_file()}
        if found:
            return {s: read_filelist(p) for s, p in found.items()}
    if split_lists is not None:
        raise UserError(f"no pretrain/train/val/test.txt in {split_lists}; give the folder of the LRS2 filelists")
    return {}


def _rel_uid(path: Path, root: Path) -> tuple[str, str | None]:
    """uid relative to root (suffix dropped), and 'pretrain'/'main' when the first folder is one of them."""
    rel = path.relative_to(root).with_suffix("") if path.is_file() else path.relative_to(root)
    parts = rel.parts
    if len(parts) > 1 and parts[0] in ("main", "pretrain"):
        return "/".join(parts[1:]), parts[0]
    return "/".join(parts), None


def detect_layout(src: Path) -> str:
    """'wav2lip' when folders hold audio.wav next to numbered jpgs; 'lrs2' with main/ or pretrain/ videos;
    else 'videos'."""
    for wav in _walk(src, {"audio.wav"}, names=True):
        if any(p.suffix == ".jpg" for p in wav.parent.iterdir()):
            return "wav2lip"
        break
    if any((src / d).is_dir() for d in ("main", "pretrain")):
        return "lrs2"
    return "videos"


def _walk(root: Path, match: set[str], names: bool = False) -> Iterable[Path]:
    """Files below root whose suffix (or, with names=True, whole name) is in `match`, in sorted order."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            key = f if names else Path(f).suffix.lower()
            if key in match and not f.startswith("."):
                yield Path(dirpath) / f


def discover(
    src: str | os.PathLike,
    split_lists: str | os.PathLike | None = None,
    split: str | None = None,
    layout: str | None = None,
) -> Discovery:
    """All inputs below SRC with their split; `layout` forces one of 'lrs2', 'wav2lip', 'videos'."""
    root = Path(src)
    if not root.is_dir():
        raise UserError(f"{src} is not a folder; give the LRS2 root, a Wav2Lip-preprocessed root or a video folder")
    layout = layout or detect_layout(root)
    if layout not in ("lrs2", "wav2lip", "videos"):
        raise UserError(f"unknown layout {layout!r}; choose lrs2, wav2lip or videos")
    if split is not None and split not in LIST_SPLITS:
        raise UserError(f"unknown split {split!r}; choose one of {', '.join(LIST_SPLITS)}")
    lists = find_split_lists(root, split_lists)

    if layout == "wav2lip":
        found = {}
        for jpg in _walk(root, {".jpg"}):  # a folder of numbered jpgs is an utterance (audio.wav checked later)
            if jpg.stem.isdigit():
                uid, top = _rel_uid(jpg.parent, root)
                found.setdefault(uid, (str(jpg.parent), top))
        kind = "jpgdir"
    else:
        found = {}
        for video in _walk(root, VIDEO_SUFFIXES):
            uid, top = _rel_uid(video, root)
            found.setdefault(uid, (str(video), top))
        kind = "video"

    disc = Discovery(layout=layout, items=[])
    if lists and split is None:
        listed: set[str] = set()
        for s in LIST_SPLITS:  # a uid in several lists keeps the first (pretrain first, like the folders)
            for uid in lists.get(s, []):
                if uid in listed:
                    continue
                listed.add(uid)
                if uid in found:
                    disc.items.append(SourceItem(uid, s, kind, found[uid][0]))
                else:
                    disc.missing.append((uid, s, f"listed in {s}.txt but not found under {root}"))
        unlisted = len(set(found) - listed)
        if unlisted:
            disc.notes.append(f"{unlisted} input(s) under {root} are in no split list and were left out")
    else:
        for uid, (path, top) in sorted(found.items()):
            s = split or ("pretrain" if top == "pretrain" else "train")
            disc.items.append(SourceItem(uid, s, kind, path))
        if not lists and split is None and found:
            disc.notes.append("no split lists found: pretrain/ -> 'pretrain', everything else -> 'train'")
    if not disc.items and not disc.missing:
        what = "folders with audio.wav and jpgs" if layout == "wav2lip" else "video files"
        raise UserError(f"no inputs found in {src} ({layout} layout: looked for {what})")
    return disc


def read_ground_truth(root: str | os.PathLike) -> dict[str, dict]:
    """uid -> ground-truth row of a `mtdistill synth` corpus (offset_frames, ...); empty for other folders."""
    path = Path(root) / "ground_truth.json"
    if not path.exists():
        return {}
    try:
        return {row["uid"]: row for row in json.loads(path.read_text())["utterances"]}
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"{path} is not a mtdistill synth ground truth; remove it or regenerate the corpus") from None
