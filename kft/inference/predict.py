"""`kft predict`: a run's model on new images or texts: top-K labels, tags or an answer per input."""

import csv
import dataclasses
import json

import keras
import numpy as np

from kft.data import images as image_data
from kft.errors import KftError
from kft.inference import inputs as input_files
from kft.inference.run_model import load
from kft.models.dynamic_padding import predict_by_length
from kft.runs.run_directory import RunDirectory

# Images decoded per chunk: bounded memory on folders of any size.
_CHUNK = 512


@dataclasses.dataclass
class Prediction:
    """What the model says about one input.

    Attributes:
        input: the image file, or where the text came from (`file, line N`).
        text: the text (text and token runs), else `None`.
        top: `(label, probability)` pairs, most likely first (classifiers).
        tags: one tag per word (token runs), else `None`.
        answer: the generated answer (causal-LM runs), else `None`.
    """

    input: str
    text: str = None
    top: list = dataclasses.field(default_factory=list)
    tags: list = None
    answer: str = None

    @property
    def label(self):
        return self.top[0][0] if self.top else None

    @property
    def probability(self):
        return self.top[0][1] if self.top else None

    def as_dict(self):
        row = {"input": self.input}
        if self.text is not None:
            row["text"] = self.text
        if self.tags is not None:
            row["tags"] = self.tags
        elif self.answer is not None:
            row["answer"] = self.answer
        else:
            row.update(label=self.label, probability=self.probability,
                       top=[{"label": label, "probability": p} for label, p in self.top])
        return row


@dataclasses.dataclass
class Predictions:
    """Every input's `Prediction`, and the image files that could not be read."""

    kind: str
    rows: list
    skipped: list

    def write(self, path):
        """Writes the rows to a `.csv` or `.jsonl` file (atomically).

        A CSV has `input`, (`text`,) `label`, `probability` and, for top-K,
        `label_2`, `probability_2`, ...; token runs write the tags space-joined.
        """
        path = str(path)
        if path.endswith(".jsonl"):
            text = "".join(json.dumps(row.as_dict(), ensure_ascii=False) + "\n"
                           for row in self.rows)
            RunDirectory.publish(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        elif path.endswith(".csv"):
            RunDirectory.publish(path, self._write_csv)
        else:
            raise KftError(f"--output {path}: write predictions to a .csv or .jsonl file.")

    def _write_csv(self, tmp):
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            texts = self.kind != "image"
            if self.kind == "token":
                writer.writerow(["input", "text", "tags"])
                writer.writerows([row.input, row.text, " ".join(row.tags)] for row in self.rows)
                return
            if self.kind == "generation":
                writer.writerow(["input", "text", "answer"])
                writer.writerows([row.input, row.text, row.answer] for row in self.rows)
                return
            k = max((len(row.top) for row in self.rows), default=1)
            header = ["input"] + (["text"] if texts else [])
            for rank in range(1, k + 1):
                suffix = "" if rank == 1 else f"_{rank}"
                header += [f"label{suffix}", f"probability{suffix}"]
            writer.writerow(header)
            for row in self.rows:
                cells = [row.input] + ([row.text] if texts else [])
                for label, probability in row.top:
                    cells += [label, f"{probability:.6f}"]
                writer.writerow(cells)


def predict(run, inputs=(), texts=(), column="text", top=1, batch_size=32, progress=None):
    """Predicts new inputs with a run's final model.

    Args:
        run: a run directory or a `RunModel` (`kft.inference.load`), so a
            caller predicting several times loads the model once.
        inputs: for an image run, image files and folders (searched
            recursively); for a text, token or causal-LM run, text files (one
            text per line), CSV/TSV/JSON Lines files (their `column`) or `-`
            (stdin).
        texts: texts given directly (text, token and causal-LM runs).
        column: the column of table files holding the text.
        top: how many labels to report per input, most likely first.
        batch_size: inputs per forward pass.
        progress: called as `progress(done, total)` after each batch.

    Returns:
        `Predictions`; unreadable image files are counted and skipped. A
        causal-LM run answers each text (`kind` `"generation"`, greedy, at
        most 64 new tokens; `kft.inference.generate` has the options).

    Example:
    ```python
    found = kft.inference.predict("runs/cats_dogs-20260101-120000", ["photos/"], top=2)
    [(row.input, row.label, row.probability) for row in found.rows]
    ```
    """
    run = load(run)
    if not isinstance(top, int) or isinstance(top, bool) or top < 1:
        raise KftError(f"top must be a whole number >= 1, got {top!r}.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise KftError(f"batch_size must be a whole number >= 1, got {batch_size!r}.")
    top = min(top, len(run.labels))
    if run.kind == "image":
        if texts:
            raise KftError("This run classifies images: pass image files or folders, not --text.")
        return _predict_images(run, input_files.image_paths(inputs), top, batch_size, progress)
    if not inputs and not texts:
        raise KftError("Nothing to predict: pass text files, - for stdin, or --text.")
    found, origins = input_files.texts(inputs, column=column, literal=texts)
    if run.kind == "token":
        return _predict_tags(run, found, origins, batch_size, progress)
    if run.kind == "causal_lm":
        from kft.inference.generate import generate

        answers = generate(run, found, batch_size=min(batch_size, 16))
        rows = [Prediction(input=origin, text=text, answer=answer)
                for origin, text, answer in zip(origins, found, answers)]
        return Predictions(kind="generation", rows=rows, skipped=[])
    probabilities = predict_by_length(
        run.model, found, batch_size,
        callbacks=_progress(progress, batch_size, len(found), len(found)))
    rows = [Prediction(input=origin, text=text, top=_top(p, run.labels, top))
            for origin, text, p in zip(origins, found, probabilities)]
    return Predictions(kind="text", rows=rows, skipped=[])


def _predict_images(run, paths, top, batch_size, progress):
    rows, skipped, done = [], [], 0
    for begin in range(0, len(paths), _CHUNK):
        chunk = paths[begin:begin + _CHUNK]
        pixels, readable = image_data.read_images(chunk, run.image_size)
        skipped += [str(path) for path, ok in zip(chunk, readable) if not ok]
        kept = [path for path, ok in zip(chunk, readable) if ok]
        if kept:
            probabilities = run.model.predict(
                pixels[readable], batch_size=batch_size, verbose=0,
                callbacks=_progress(progress, batch_size, len(kept), len(paths), offset=done))
            rows += [Prediction(input=str(path), top=_top(p, run.labels, top))
                     for path, p in zip(kept, probabilities)]
        done += len(kept)
    if not rows:
        raise KftError(f"None of the {len(paths)} image file(s) could be read.")
    return Predictions(kind="image", rows=rows, skipped=skipped)


def _predict_tags(run, found, origins, batch_size, progress):
    from kft.models.token_classifier import predict_words

    rows = []
    for begin in range(0, len(found), batch_size):
        chunk = found[begin:begin + batch_size]
        for origin, text, tags in zip(origins[begin:], chunk,
                                      predict_words(run.model, chunk, batch_size)):
            rows.append(Prediction(input=origin, text=text, tags=tags))
        if progress:
            progress(len(rows), len(found))
    return Predictions(kind="token", rows=rows, skipped=[])


def _top(probabilities, labels, k):
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [(labels[i], float(probabilities[i])) for i in order]


def _progress(progress, batch_size, count, total, offset=0):
    """A callback reporting `progress(done, total)` while `count` inputs are predicted."""
    if progress is None:
        return []

    class Report(keras.callbacks.Callback):
        def on_predict_batch_end(self, batch, logs=None):
            progress(offset + min((batch + 1) * batch_size, count), total)

    return [Report()]
