"""One GGUF file opened: its metadata as Python values, its tensors as float32.

`gguf.GGUFReader` raises bare `ValueError`s, `IndexError`s or reshape errors
on a damaged or truncated file; `GGUFFile` turns each into one `KftError`
that names the file and what is wrong with it, and checks that every tensor's
bytes are present before anything is dequantized.
"""

import functools
import os

import numpy as np

from kft.errors import KftError

MAGIC = b"GGUF"


def is_gguf(path):
    """Whether `path` is a file that starts with GGUF's magic bytes.

    Args:
        path: any path.

    Returns:
        `True` for a GGUF file (complete or not), else `False`.
    """
    try:
        with open(path, "rb") as file:
            return file.read(4) == MAGIC
    except OSError:
        return False


def open_gguf(path):
    """A `GGUFFile`, parsed once per process for as long as the file is unchanged.

    gguf's reader parses metadata field by field in Python: SmolLM2's 49,152
    tokens and 48,900 merges take about 2 s, every time. Loading the same
    file again (the random-weights baseline, a second model) reuses the
    parse; tensors are still read from the file on demand.

    Args:
        path: the `.gguf` file.

    Returns:
        The `GGUFFile`.
    """
    path = os.path.abspath(str(path))
    try:
        stat = os.stat(path)
    except OSError:
        return GGUFFile(path)  # Raises the missing-file error.
    return _open_cached(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _open_cached(path, size, mtime_ns):
    return GGUFFile(path)


class GGUFFile:
    """A GGUF file's metadata and tensors.

    Args:
        path: the `.gguf` file.

    Attributes:
        path: the file, as given.
        architecture: `general.architecture` (`"llama"`, `"qwen2"`, ...).
        metadata: every key-value field as a Python value (strings, numbers,
            lists), except the `GGUF.*` header fields.

    Raises:
        KftError: the file is missing, not GGUF, truncated or damaged, or
            has no `general.architecture`.

    Example:
    ```python
    file = GGUFFile("SmolLM2-135M-Instruct.Q4_1.gguf")
    file.architecture                     # 'llama'
    file.get("llama.block_count")         # 30
    file.tensor("token_embd.weight").shape  # (49152, 576), float32
    ```
    """

    def __init__(self, path):
        self.path = str(path)
        if not os.path.isfile(self.path):
            raise KftError(f"GGUF file {self.path} does not exist.")
        if not is_gguf(self.path):
            raise KftError(f"{self.path} is not a GGUF file (it does not start with b'GGUF').")
        gguf = _gguf_module()
        try:
            reader = gguf.GGUFReader(self.path)
        except (ValueError, IndexError, KeyError, OverflowError, UnicodeDecodeError) as error:
            # The reader slices a memory map: a short file yields short arrays,
            # and the failure shows up wherever the first one is used.
            reason = f"{type(error).__name__}: {str(error).rstrip('.')}"
            raise KftError(
                f"{self.path} is truncated or damaged: the GGUF reader stopped with "
                f"{reason}. Download or convert the file again."
            ) from None
        self._reader = reader
        self.metadata = {
            name: _field_value(field, self.path)
            for name, field in reader.fields.items() if not name.startswith("GGUF.")
        }
        self._tensors = {tensor.name: tensor for tensor in reader.tensors}
        self._check_complete()
        self.architecture = self.get("general.architecture")
        if not isinstance(self.architecture, str):
            raise KftError(f"{self.path} has no general.architecture metadata.")

    @property
    def tensor_names(self):
        """The names of the file's tensors, in file order."""
        return list(self._tensors)

    def get(self, key, default=None):
        """A metadata value, or `default` when the file does not have it."""
        return self.metadata.get(key, default)

    def require(self, key):
        """A metadata value the model cannot be built without.

        Raises:
            KftError: the file lacks `key`.
        """
        if key not in self.metadata:
            raise KftError(
                f"{self.path} ({self.architecture}) lacks the metadata key {key!r}, "
                "which kft needs to build the model."
            )
        return self.metadata[key]

    def has_tensor(self, name):
        """Whether the file holds a tensor called `name`."""
        return name in self._tensors

    def tensor(self, name, shape=None):
        """A tensor, dequantized to a float32 array in NumPy (row-major) order.

        GGUF lists dimensions innermost first; the array has them reversed,
        so a projection comes out as (output features, input features), the
        layout of PyTorch's `nn.Linear.weight`.

        Args:
            name: the GGUF tensor name (`"blk.0.attn_q.weight"`).
            shape: the shape the caller expects; a different one is an error.

        Returns:
            A float32 `np.ndarray`.

        Raises:
            KftError: the tensor is missing, has a quantization type the
                `gguf` package cannot dequantize, or the wrong shape.
        """
        gguf = _gguf_module()
        if name not in self._tensors:
            raise KftError(
                f"{self.path} ({self.architecture}) has no tensor {name!r}; it is not a "
                "complete model of this architecture."
            )
        tensor = self._tensors[name]
        try:
            values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        except NotImplementedError:
            raise KftError(
                f"Tensor {name!r} in {self.path} is {tensor.tensor_type.name}, which the gguf "
                "package cannot dequantize; use a file quantized as F32, F16, BF16, Q8_0, "
                "Q4_0/1, Q5_0/1 or a K-quant."
            ) from None
        values = np.asarray(values, dtype=np.float32)
        if shape is not None and tuple(values.shape) != tuple(shape):
            raise KftError(
                f"Tensor {name!r} in {self.path} has shape {tuple(values.shape)}, but the "
                f"metadata describe {tuple(shape)}."
            )
        return values

    def _check_complete(self):
        size = os.path.getsize(self.path)
        for tensor in self._tensors.values():
            end = tensor.data_offset + tensor.n_bytes
            if end > size or tensor.data.nbytes != tensor.n_bytes:
                raise KftError(
                    f"{self.path} is truncated: tensor {tensor.name!r} needs bytes up to "
                    f"{end}, the file has {size}. Download or convert the file again."
                )


def _field_value(field, path):
    try:
        return field.contents()
    except UnicodeDecodeError:
        raise KftError(f"{path} is damaged: metadata field {field.name!r} is not UTF-8.") from None


def _gguf_module():
    try:
        import gguf
    except ImportError:
        raise KftError(
            "Reading GGUF files needs the gguf package: pip install 'kft[llm]' "
            "(or pip install gguf==0.19.0)."
        ) from None
    return gguf
