"""mtdistill: multimodal Transformer distillation (VocaLiST -> MTDVocaLiST, MulT -> video-only students)."""

__version__ = "0.1.0"
