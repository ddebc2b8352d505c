"""Reads `torch.save` checkpoints into numpy arrays, without torch.

Users bring PyTorch checkpoints (a state dict saved with `torch.save`), and
some pretrained weights only ship that way. Installing torch just to read
them costs gigabytes, and unpickling them with the plain `pickle` module runs
whatever the file asks for. This reader understands both formats `torch.save`
writes, and only unpickles the few classes a state dict is made of.

The legacy format (torch < 1.6, or `_use_new_zipfile_serialization=False`)
is a sequence of pickles in one file: a magic number, the protocol version,
a dict of system information, the object itself (whose tensors refer to
storages by persistent id), and the list of storage keys. Then each storage
follows in that order as an 8-byte little-endian element count and its raw
elements. The zip format (torch >= 1.6) holds the object pickle as
`<name>/data.pkl` and each storage as the raw file `<name>/data/<key>`.
"""

import collections
import os
import pickle
import struct
import zipfile

import numpy as np

from kft.errors import KftError

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_ZIP_SIGNATURE = b"PK\x03\x04"


def _bfloat16():
    import ml_dtypes  # A Keras dependency; numpy itself has no bfloat16.

    return ml_dtypes.bfloat16


# The storage classes `torch.save` pickles by name, and their element types.
_STORAGE_DTYPES = {
    "FloatStorage": "float32",
    "DoubleStorage": "float64",
    "HalfStorage": "float16",
    "BFloat16Storage": _bfloat16,
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
    "UntypedStorage": "uint8",
}


def load_torch_checkpoint(path):
    """Reads a file written by `torch.save`, with numpy arrays for tensors.

    Both the zip format (torch >= 1.6) and the legacy format are read. Only
    what a state dict is made of is unpickled: dicts, lists, tuples, strings,
    numbers, `OrderedDict` and tensors. A file holding anything else (a whole
    pickled `nn.Module`, an optimizer with custom classes) is refused rather
    than executed.

    Args:
        path: the checkpoint file (`.pt`, `.pth`, `.bin`).

    Returns:
        The saved object with every tensor replaced by a C-contiguous numpy
        array of the same shape and dtype; for a state dict, an `OrderedDict`
        mapping parameter names to arrays.

    Example:
    >>> state = load_torch_checkpoint("resnet18.pth")
    >>> state["conv1.weight"].shape
    (64, 3, 7, 7)
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as file:
            signature = file.read(len(_ZIP_SIGNATURE))
            if signature == _ZIP_SIGNATURE:
                result = _load_zip(path)
            else:
                file.seek(0)
                result = _load_legacy(file, path)
    except FileNotFoundError as error:
        raise KftError(f"The checkpoint {path} does not exist.") from error
    except (pickle.UnpicklingError, EOFError, ValueError, struct.error,
            zipfile.BadZipFile, IndexError, TypeError, AttributeError) as error:
        raise KftError(
            f"{path} is not a readable torch.save checkpoint ({error}). Re-save "
            "it with torch.save(model.state_dict(), path)."
        ) from error
    return _contiguous(result, {})


def _contiguous(obj, done):
    """Returns `obj` with every array C-contiguous, changing containers in place.

    torch keeps the strides a tensor had (channels-last convolution kernels,
    transposed views), but many consumers of numpy arrays assume C order:
    safetensors' `save_file`, for one, silently writes the memory order.
    """
    if isinstance(obj, np.ndarray):
        return obj if obj.flags.c_contiguous else obj.copy(order="C")
    if id(obj) in done:
        return done[id(obj)]
    done[id(obj)] = obj
    if isinstance(obj, dict):
        for key, value in obj.items():
            obj[key] = _contiguous(value, done)
    elif isinstance(obj, list):
        obj[:] = [_contiguous(value, done) for value in obj]
    elif isinstance(obj, tuple):
        done[id(obj)] = tuple(_contiguous(value, done) for value in obj)
    return done[id(obj)]


def _load_legacy(file, path):
    unpickler = _StateDictUnpickler(file, path)
    if unpickler.load() != _LEGACY_MAGIC:
        raise KftError(
            f"{path} is not a torch.save checkpoint (no torch magic number "
            "at the start). Re-save it with torch.save(model.state_dict(), path)."
        )
    protocol = _StateDictUnpickler(file, path).load()
    if protocol != _LEGACY_PROTOCOL:
        raise KftError(
            f"{path} uses torch serialization protocol {protocol}; only "
            f"{_LEGACY_PROTOCOL} and the zip format are supported."
        )
    sys_info = _StateDictUnpickler(file, path).load()
    byteorder = "<" if sys_info.get("little_endian", True) else ">"

    storages = {}

    def load_storage(storage_type, key, location, numel, view_metadata=None):
        del location  # Everything lands in host memory.
        if key not in storages:
            storages[key] = np.empty(numel, storage_type.dtype(byteorder))
        root = storages[key]
        if view_metadata is None:
            return root
        # Old torch saved views into a storage as (view key, offset, size).
        _, offset, size = view_metadata
        return root[offset:offset + size]

    # Tensors are views into storages whose bytes come after this pickle:
    # the views are made now and see the data once the storages are filled.
    result = _StateDictUnpickler(file, path, load_storage).load()
    keys = _StateDictUnpickler(file, path).load()
    for key in keys:
        if key not in storages:
            raise KftError(f"{path} lists a storage {key!r} that no tensor uses.")
        storage = storages[key]
        (numel,) = struct.unpack("<q", file.read(8))
        if numel != storage.size:
            raise KftError(
                f"{path} is corrupt: storage {key!r} holds {numel} elements, "
                f"its tensors expect {storage.size}."
            )
        raw = storage.view(np.uint8)
        if file.readinto(raw) != raw.size:
            raise KftError(f"{path} is truncated: storage {key!r} is incomplete.")
    return result


def _load_zip(path):
    with zipfile.ZipFile(path) as archive:
        pickles = [name for name in archive.namelist() if name.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise KftError(
                f"{path} is a zip file but not a torch.save checkpoint "
                "(it has no single <name>/data.pkl)."
            )
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = "<"
        if prefix + "byteorder" in archive.namelist():
            byteorder = "<" if archive.read(prefix + "byteorder") == b"little" else ">"
        storages = {}

        def load_storage(storage_type, key, location, numel):
            del location, numel  # The record's own length is what counts.
            if key not in storages:
                try:
                    raw = bytearray(archive.read(f"{prefix}data/{key}"))
                except KeyError as error:
                    raise KftError(f"{path} is missing storage {key!r}.") from error
                storages[key] = np.frombuffer(raw, storage_type.dtype(byteorder))
            return storages[key]

        with archive.open(pickles[0]) as file:
            return _StateDictUnpickler(file, path, load_storage).load()


class _StorageType:
    """Stands for a torch storage class such as `torch.FloatStorage`."""

    def __init__(self, name):
        self.name = name

    def dtype(self, byteorder):
        dtype = _STORAGE_DTYPES[self.name]
        dtype = np.dtype(dtype() if callable(dtype) else dtype)
        return dtype if dtype.itemsize == 1 else dtype.newbyteorder(byteorder)


def _strided_view(storage, storage_offset, size, stride):
    """The numpy twin of `torch.Tensor.set_(storage, offset, size, stride)`."""
    size, stride = tuple(size), tuple(stride)
    if len(size) != len(stride) or min(size + stride + (storage_offset,), default=0) < 0:
        raise ValueError(f"bad tensor layout: size {size}, stride {stride}")
    if 0 not in size:
        # as_strided does not check bounds, so a corrupt file must not reach it.
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= storage.size:
            raise ValueError(
                f"tensor of size {size} at offset {storage_offset} runs past "
                f"its storage of {storage.size} elements"
            )
    base = storage[storage_offset:] if storage_offset < storage.size else storage[:0]
    return np.lib.stride_tricks.as_strided(
        base, shape=size, strides=[s * storage.itemsize for s in stride]
    )


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    del unused  # requires_grad, backward hooks, metadata: training-time state.
    return _strided_view(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *unused):
    del unused  # requires_grad, backward hooks, state.
    return data


_REBUILD_FUNCTIONS = {
    "_rebuild_tensor": _rebuild_tensor,
    "_rebuild_tensor_v2": _rebuild_tensor,
    "_rebuild_parameter": _rebuild_parameter,
    "_rebuild_parameter_with_state": _rebuild_parameter,
}


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickles only what state dicts are made of; storages via a callback."""

    def __init__(self, file, path, load_storage=None):
        super().__init__(file)
        self._path = path
        self._load_storage = load_storage

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in _REBUILD_FUNCTIONS:
            return _REBUILD_FUNCTIONS[name]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise KftError(
            f"{self._path} holds a {module}.{name} object, which kft does not "
            "unpickle: it reads state dicts only. Save the weights with "
            "torch.save(model.state_dict(), path) and load that file."
        )

    def persistent_load(self, pid):
        if (
            self._load_storage is None
            or not isinstance(pid, tuple)
            or not pid
            or pid[0] != "storage"
            or not isinstance(pid[1], _StorageType)
        ):
            raise KftError(
                f"{self._path} refers to an object kft cannot read "
                f"({str(pid)[:80]}). Save the weights with "
                "torch.save(model.state_dict(), path) and load that file."
            )
        return self._load_storage(*pid[1:])
