"""`Data`: what every kft data loader returns and every run reads.

A recipe's `data(params)` returns a `Data` (`kft.data.images.load`,
`kft.data.text.load`, `kft.data.token_labels.load` and the named datasets
all do), or any object with `train` and `class_names` (and, optionally,
the other fields below), which `as_data` turns into one.
"""

import dataclasses

from kft.errors import KftError

TASKS = ("classification", "image_classification", "text_classification",
         "token_classification", "causal_lm")


@dataclasses.dataclass(kw_only=True)
class Data:
    """Labelled data ready for `model.fit`.

    Attributes:
        train: batches of `(inputs, labels)`, reshuffled every epoch.
        class_names: the class of each label index (tags, for taggers).
        validation: batches in a fixed order, or `None`.
        test: batches in a fixed order, or `None`; a run reports its
            metrics at the end.
        num_train, num_validation, num_test: examples in each set (`None`
            where the source does not say).
        batch_size: examples per batch, or `None`.
        class_weight: `{label: weight}` for `fit`, or `None`.
        multi_label: labels are multi-hot vectors, not class indices.
        skipped: inputs left out because they could not be read.
        task: what the labels are for, one of `TASKS`. `"causal_lm"`
            batches are `(x, next tokens, loss weights)`
            (`kft.data.instructions.InstructionData.run_data`).
        instructions: for `"causal_lm"`, the `InstructionData` the batches
            were made from (its held-out prompts are generated from).
    """

    train: object
    class_names: list
    validation: object = None
    test: object = None
    num_train: int | None = None
    num_validation: int | None = None
    num_test: int | None = None
    batch_size: int | None = None
    class_weight: dict | None = None
    multi_label: bool = False
    skipped: list = dataclasses.field(default_factory=list)
    task: str = "classification"
    instructions: object = None

    def __post_init__(self):
        if self.task not in TASKS:
            raise KftError(f"Data task {self.task!r} is not one of {', '.join(TASKS)}.")

    def held_out(self):
        """`{"validation": batches, "test": batches}`, the sets this data has."""
        sets = {"validation": self.validation, "test": self.test}
        return {name: batches for name, batches in sets.items() if batches is not None}


def as_data(data):
    """Returns `data` as a `Data`.

    Args:
        data: a `Data`, or an object with `train` and `class_names`
            attributes and any of `Data`'s other fields.

    Raises:
        KftError: `data` has no `train` or no `class_names`.
    """
    if isinstance(data, Data):
        return data
    missing = [name for name in ("train", "class_names") if not hasattr(data, name)]
    if missing:
        raise KftError(
            f"The recipe's data is a {type(data).__name__} without "
            f"{' or '.join(missing)}; return a kft.data loader's result (kft.data.Data) "
            "or an object with train, validation and class_names."
        )
    fields = {f.name for f in dataclasses.fields(Data)}
    given = {name: getattr(data, name) for name in fields if hasattr(data, name)}
    given["class_names"] = list(given["class_names"])
    return Data(**given)
