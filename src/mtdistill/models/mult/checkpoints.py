"""Loading MulT teacher and video-only student files (written by `format.save_model`)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from mtdistill.core.errors import UserError
from mtdistill.core.inputs import file_or_folder
from mtdistill.core.runs import MODEL_BEST
from mtdistill.models.mult.format import FORMAT, read_model_file
from mtdistill.models.mult.students import StudentConfig, VideoStudent
from mtdistill.models.mult.teacher import MulT, MulTConfig


def load_mult_checkpoint(path: str | Path) -> nn.Module:
    """Load a MulT teacher or a video-only student saved by ``save_checkpoint`` (strict, eval mode)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found; pass a run's model_best.safetensors")
    meta, state = read_model_file(path)
    if meta.get("format") != FORMAT:
        raise UserError(f"{path}: format {meta.get('format')!r} is not {FORMAT!r}; is it a MulT/student checkpoint?")
    if meta["kind"] == "mult":
        model: nn.Module = MulT(config=MulTConfig(**meta["config"]))
    else:
        model = VideoStudent(StudentConfig(**meta["config"]))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UserError(f"{path}: weights do not fit the stored config ({str(exc).splitlines()[0]})") from None
    return model.eval()


def resolve_model_file(run_or_file: str | Path) -> Path:
    """A run folder (its model_best.safetensors) or a checkpoint file."""
    missing = "{path} not found; train that run first (mtdistill mult train CONFIG) or fix teacher.run"
    return file_or_folder(run_or_file, MODEL_BEST, missing)
