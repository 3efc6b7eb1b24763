"""The multimodal-to-unimodal system's models: the MulT teacher (video + audio + text) and the video-only students.

from mtdistill.models import MulT            # the teacher; MulT.from_checkpoint(path) reads official files too
from mtdistill.models.mult import VideoStudent, load_mult_checkpoint
"""

from mtdistill.models.mult.checkpoints import load_mult_checkpoint, resolve_model_file
from mtdistill.models.mult.format import FORMAT, save_model
from mtdistill.models.mult.official import TeacherFile, read_teacher_file
from mtdistill.models.mult.students import StudentConfig, VideoStudent, configuration, student_for
from mtdistill.models.mult.teacher import MulT, MulTConfig, MulTOutput

__all__ = [
    "FORMAT",
    "MulT",
    "MulTConfig",
    "MulTOutput",
    "StudentConfig",
    "TeacherFile",
    "VideoStudent",
    "configuration",
    "load_mult_checkpoint",
    "read_teacher_file",
    "resolve_model_file",
    "save_model",
    "student_for",
]
