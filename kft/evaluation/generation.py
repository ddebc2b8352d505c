"""Scores for generated text: perplexity, BLEU and ROUGE-L against references.

BLEU is sacrebleu's corpus BLEU (its default `13a` tokenization, the score
papers report, 0-100); ROUGE-L is rouge-score's longest-common-subsequence
F-measure averaged over the examples (0-1). rouge-score's own tokenizer keeps
only ASCII letters and digits, so a Spanish answer would lose every accented
word; kft tokenizes into Unicode words instead (`\\w+`, lowercased), which
gives the same result on English text.
"""

import dataclasses
import math
import re

from kft.errors import KftError

_WORD = re.compile(r"\w+", re.UNICODE)


@dataclasses.dataclass
class GenerationScores:
    """How generated answers compare with reference answers.

    Attributes:
        bleu: sacrebleu corpus BLEU, 0-100.
        rouge_l: mean ROUGE-L F-measure, 0-1.
        examples: answers scored.
        empty: answers that were empty.
    """

    bleu: float
    rouge_l: float
    examples: int
    empty: int = 0

    def as_dict(self):
        return dataclasses.asdict(self)


def perplexity(loss):
    """`exp(loss)`: the perplexity of a mean per-token cross-entropy (in nats).

    Returns `inf` where the exponent overflows, so a diverged model still
    reports a number.
    """
    try:
        return math.exp(float(loss))
    except OverflowError:
        return math.inf


def score_generations(answers, references):
    """BLEU and ROUGE-L of `answers` against one reference each.

    Args:
        answers: generated strings.
        references: the reference strings, in the same order.

    Returns:
        A `GenerationScores`.

    Raises:
        KftError: the lists differ in length or are empty.

    Example:
    ```python
    scores = score_generations(["The cat sat."], ["The cat sat on the mat."])
    scores.bleu, scores.rouge_l  # (30.2, 0.667)
    ```
    """
    import sacrebleu

    answers, references = [str(a) for a in answers], [str(r) for r in references]
    if len(answers) != len(references):
        raise KftError(f"{len(answers)} answers but {len(references)} references.")
    if not answers:
        raise KftError("No answers to score.")
    bleu = sacrebleu.corpus_bleu(answers, [references]).score
    return GenerationScores(
        bleu=float(bleu),
        rouge_l=sum(map(rouge_l, answers, references)) / len(answers),
        examples=len(answers),
        empty=sum(not answer.strip() for answer in answers),
    )


def rouge_l(answer, reference):
    """The ROUGE-L F-measure of one answer against one reference (0-1)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_UnicodeWords())
    return float(scorer.score(reference, answer)["rougeL"].fmeasure)


class _UnicodeWords:
    """rouge-score's tokenizer interface over lowercased Unicode words."""

    def tokenize(self, text):
        return _WORD.findall(text.lower())
