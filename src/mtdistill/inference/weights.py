"""Where the official checkpoints live, and a downloader that verifies them (never hangs offline)."""

from __future__ import annotations

import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from mtdistill.core.errors import UserError
from mtdistill.models.vocalist import VocaLiST


@dataclass(frozen=True)
class OfficialWeights:
    """One released checkpoint (spec/vocalist.md section 6)."""

    name: str
    filename: str
    url: str
    preset: str  # input preset the file expects
    min_bytes: int  # plausible size range: a truncated or HTML error page fails the check
    max_bytes: int
    direct: bool  # False: a Google Drive folder that needs a browser


MTD_STUDENT = OfficialWeights(
    name="MTDVocaLiST student (13.28M, LRS2)", filename="pure_MTDVocaLiST.pth", preset="mtd", direct=True,
    url="https://github.com/xjchenGit/MTDVocaLiST/releases/download/v1.0/pure_MTDVocaLiST.pth",
    min_bytes=45_000_000, max_bytes=70_000_000,
)  # fmt: skip
VOCALIST_TEACHER = OfficialWeights(
    name="VocaLiST teacher (80.1M, LRS2)", filename="vocalist_5f_lrs2.pth", preset="vocalist", direct=False,
    url="https://drive.google.com/drive/folders/1-g4qHUNNcCZpmSqEflKMxPMvwnn9e88N",
    min_bytes=300_000_000, max_bytes=1_200_000_000,
)  # fmt: skip
OFFICIAL = (MTD_STUDENT, VOCALIST_TEACHER)

NO_CHECKPOINT_MESSAGE = (
    "no checkpoint given; pass --checkpoint FILE (our runs/<name>/model_best.safetensors, or an official file: "
    f"`mtdistill weights` downloads {MTD_STUDENT.filename} from {MTD_STUDENT.url} (use --preset mtd); "
    f"the VocaLiST teacher {VOCALIST_TEACHER.filename} is in the Google Drive folder {VOCALIST_TEACHER.url} "
    "(use --preset vocalist))"
)


def download(url: str, dest: Path, timeout: float = 20.0, progress: bool = True) -> Path:
    """Fetch ``url`` to ``dest`` atomically (temp file + rename); one-line UserError on any network failure."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        response = urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 - fixed https URLs or test URLs
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(
            f"cannot download {url} ({reason}); no network? download it by hand and pass it with --checkpoint"
        ) from None
    total = int(response.headers.get("Content-Length") or 0) or None
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        from tqdm import tqdm

        with (
            os.fdopen(fd, "wb") as out,
            tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar,
        ):
            while chunk := response.read(1 << 20):
                out.write(chunk)
                bar.update(len(chunk))
        os.replace(tmp, dest)
    except (OSError, TimeoutError) as exc:
        raise UserError(f"download of {url} failed midway ({exc}); rerun `mtdistill weights`") from None
    finally:
        response.close()
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def verify(path: Path, spec: OfficialWeights) -> dict:
    """Size within the plausible range, then a strict load with VocaLiST.from_checkpoint."""
    size = path.stat().st_size
    if not spec.min_bytes <= size <= spec.max_bytes:
        raise UserError(
            f"{path} has {size:,} bytes, expected {spec.min_bytes:,}..{spec.max_bytes:,}; delete it and download again"
        )

    model = VocaLiST.from_checkpoint(path, preset=spec.preset)
    params = sum(p.numel() for p in model.parameters())
    return {"file": str(path), "bytes": size, "params": params, "preset": spec.preset}


def fetch_official(dest: str | Path, url: str | None = None, timeout: float = 20.0) -> list[dict]:
    """Download and verify the directly downloadable official checkpoint(s) into ``dest``.

    ``url`` overrides the student URL (mirrors, tests). The teacher sits in a Google Drive folder, which
    needs a browser: its URL is reported instead.
    """
    dest = Path(dest)
    spec = MTD_STUDENT
    target = dest / spec.filename
    if not target.exists():
        download(url or spec.url, target, timeout=timeout)
    return [verify(target, spec)]
