"""Models: VocaLiST / MTDVocaLiST, SyncNet, MulT."""

from mtdistill.models.mult.teacher import MulT
from mtdistill.models.vocalist import STUDENT, TEACHER, TINY, SyncOutput, VocaLiST, VocaLiSTConfig

__all__ = ["VocaLiST", "VocaLiSTConfig", "SyncOutput", "TEACHER", "STUDENT", "TINY", "MulT"]


def __getattr__(name: str):  # MulT is imported on first use: most users never need it
    if name == "MulT":
        return MulT
    raise AttributeError(name)
