"""Evaluation: the official retrieval protocol, validation F1, tables and figures of the paper."""

from mtdistill.evaluation.protocol import UtteranceScores, score_utterance, utterance_accuracy

__all__ = ["UtteranceScores", "score_utterance", "utterance_accuracy"]
