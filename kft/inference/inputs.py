"""What `kft predict` reads: image files and folders, or texts from files and stdin.

Inputs must be of the run's kind: an image run refuses text files and a text
run image files, in one line that says what to pass instead.
"""

import pathlib
import sys

from kft.data import images as image_data
from kft.data import text as text_data
from kft.errors import KftError

_TABLES = (".csv", ".tsv", ".jsonl", ".ndjson")


def image_paths(inputs):
    """Every image file named by `inputs` (files, or folders searched recursively).

    Raises:
        KftError: an input is missing, is not an image file, or a folder
            holds no images.
    """
    paths = []
    for given in inputs:
        path = pathlib.Path(given)
        if str(given) == "-" or not path.exists():
            raise KftError(f"{given} does not exist: an image run takes image files or "
                           "folders of them.")
        if path.is_dir():
            found = image_data.image_files(path)
            if not found:
                raise KftError(f"Folder {path} holds no images ({', '.join(image_data.EXTENSIONS)}).")
            paths += found
        elif path.suffix.lower() in image_data.EXTENSIONS:
            paths.append(path)
        else:
            raise KftError(
                f"{path} is not an image ({', '.join(image_data.EXTENSIONS)}): this run "
                "classifies images; pass image files or folders."
            )
    return paths


def texts(inputs, column="text", literal=(), stdin=None):
    """The texts named by `inputs`, with where each came from.

    Args:
        inputs: `.txt` files (one text per non-empty line), `.csv`/`.tsv`/
            `.jsonl` files (the `column` of each row) or `-` (lines from stdin).
        column: the column (key) of table files.
        literal: texts given on the command line.
        stdin: the stream `-` reads (default `sys.stdin`).

    Returns:
        `(texts, origins)` lists.
    """
    found, origins = list(literal), [f"--text {i + 1}" for i in range(len(literal))]
    for given in inputs:
        if str(given) == "-":
            lines = [line.rstrip("\n") for line in (stdin or sys.stdin)]
            _add_lines(lines, "stdin", found, origins)
            continue
        path = pathlib.Path(given)
        if not path.is_file():
            what = "is a folder" if path.is_dir() else "does not exist"
            raise KftError(f"{given} {what}: a text run takes .txt, .csv, .tsv or .jsonl files, "
                           "- for stdin, or --text.")
        suffix = path.suffix.lower()
        if suffix in image_data.EXTENSIONS:
            raise KftError(f"{path} is an image: this run classifies text; pass text files, "
                           "- for stdin, or --text.")
        if suffix in _TABLES:
            # The training reader: the same header, quoting and JSON rules.
            column_texts, places = text_data.read_texts(path, column)
            found += column_texts
            origins += places
        else:
            _add_lines(path.read_text(encoding="utf-8").splitlines(), str(path), found, origins)
    if not found:
        raise KftError("No text to predict: the inputs hold no non-empty line.")
    return found, origins


def _add_lines(lines, where, found, origins):
    for number, line in enumerate(lines, start=1):
        if line.strip():
            found.append(line.strip())
            origins.append(f"{where}, line {number}")
