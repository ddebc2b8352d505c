"""General English sentences: a reference sample of a text encoder's pretraining domain.

`kft suggest` compares a target dataset's activations with those of text like
what the encoder was pretrained on, group by group. The reference is the
statements of chatterbot-corpus 1.3.3's English files (BSD; fetched from PyPI
at first use, like the support-bot recipe's data): everyday questions and
answers on some twenty topics (computers, food, health, history, money,
movies, politics, science, sports, ...). Pass your own text file to
`kft suggest --reference` for a closer sample.
"""

import numpy as np

from kft.errors import KftError
from kft.internal import assets

PACKAGE = ("chatterbot-corpus", "1.3.3")
MIN_WORDS = 3


def sentences(count=256, seed=0):
    """`count` distinct English statements of at least three words, a seeded sample.

    Args:
        count: number of sentences (at most the 1,569 the corpus holds).
        seed: seeds the sample.

    Returns:
        A list of strings.

    Example:
    ```python
    reference = kft.data.datasets.reference_sentences.sentences(128)
    ```
    """
    from kft.data.instructions import chatterbot_statements

    if count < 1:
        raise KftError(f"count must be at least 1, got {count!r}.")
    folder = assets.pypi_package(*PACKAGE) / "chatterbot_corpus" / "data" / "english"
    found = sorted({s for s in chatterbot_statements(folder) if len(s.split()) >= MIN_WORDS})
    if count > len(found):
        raise KftError(f"The reference corpus holds {len(found)} sentences; asked for {count}.")
    rng = np.random.default_rng(seed)
    return [found[i] for i in rng.choice(len(found), count, replace=False)]
