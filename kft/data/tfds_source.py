"""TFDS classification datasets: found, checked and prepared, for images and texts."""

import re

from kft.errors import KftError

# `--data tfds:NAME` names a TFDS dataset, for images and texts alike.
PREFIX = "tfds:"


def named(source):
    """The TFDS name in a `"tfds:NAME"` source, or `None` for anything else."""
    return source[len(PREFIX):] if source.startswith(PREFIX) else None


def is_registered(text):
    """True for registered TFDS names such as `mnist`, `mnist/config` or `mnist:3.0.1`."""
    base = re.split(r"[/:]", text, maxsplit=1)[0]
    if not re.fullmatch(r"[a-z][a-z0-9_]*", base):
        return False
    import tensorflow_datasets as tfds

    return base in tfds.list_builders(with_community_datasets=False)


def prepared_builder(name, data_dir, kind, local_source):
    """Returns the prepared TFDS builder of `name` and its class names.

    Args:
        name: a TFDS name, optionally with a version.
        data_dir: where TFDS keeps its datasets (`None`: TFDS's default).
        kind: what the inputs are (`"image"`, `"text"`), for messages.
        local_source: how to pass local data instead, for messages
            (`"a local image folder with --data DIR"`).

    Raises:
        KftError: the name is unknown, the dataset is not (input, class
            label) pairs, or the download failed.
    """
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as error:
        raise KftError(
            f"There is no TFDS dataset named {name!r}. Pass a TFDS name "
            f"(see tfds.list_builders()) or {local_source}."
        ) from error
    keys = builder.info.supervised_keys
    simple = keys and len(keys) == 2 and all(isinstance(key, str) for key in keys)
    label_feature = builder.info.features[keys[1]] if simple else None
    if not isinstance(label_feature, tfds.features.ClassLabel):
        raise KftError(
            f"TFDS dataset {name!r} is not made of ({kind}, class label) pairs; "
            f"kft's {kind} classifiers need one that is."
        )
    try:
        builder.download_and_prepare()
    except ImportError:
        raise  # A broken installation, not a failed download.
    except Exception as error:  # TFDS raises whatever its downloader hit.
        raise KftError(
            f"Could not download TFDS dataset {name!r} ({root_cause(error)}). Without "
            f"network access, pass {local_source}."
        ) from error
    return builder, list(label_feature.names)


def root_cause(error):
    """The innermost error, in one line: the chains from network failures are long."""
    while error.__cause__ or error.__context__:
        error = error.__cause__ or error.__context__
    lines = str(error).strip().splitlines() or [""]
    return f"{type(error).__name__}: {lines[0][:150]}"
