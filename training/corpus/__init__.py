"""A synthetic corpus with checkable answers (addition), so training is judged by accuracy."""

from training.corpus.generate import CorpusSpec, generate_corpus
from training.corpus.task import Question, extract_answer, is_correct, split_questions

__all__ = [
    "CorpusSpec",
    "Question",
    "extract_answer",
    "generate_corpus",
    "is_correct",
    "split_questions",
]
