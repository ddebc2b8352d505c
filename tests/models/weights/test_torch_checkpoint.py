"""Reading torch.save files without torch, on checkpoints built byte by byte.

The pickles here are written opcode by opcode, the way torch writes them, so
the tests need no torch and prove the format handling on its own.
"""

import collections
import pickle
import struct
import zipfile

import ml_dtypes
import numpy as np
import pytest

from kft.errors import KftError
from kft.models.weights.torch_checkpoint import load_torch_checkpoint

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


# Pickle protocol 2 opcodes, as torch's pickler emits them.
def _global(module, name):
    return b"c" + f"{module}\n{name}\n".encode()


def _str(text):
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _int(value):
    return b"J" + struct.pack("<i", value)


def _tuple(*items):
    return b"(" + b"".join(items) + b"t"


def _ordered_dict(items):
    pairs = b"".join(_str(key) + value for key, value in items)
    return _global("collections", "OrderedDict") + b")R" + b"(" + pairs + b"u"


def _storage(type_name, key, numel, legacy, view=None):
    fields = [_str("storage"), _global("torch", type_name), _str(key), _str("cpu"), _int(numel)]
    if legacy:  # Only the legacy format has a view field.
        view_field = b"N" if view is None else _tuple(_str(view[0]), *map(_int, view[1:]))
        fields.append(view_field)
    return _tuple(*fields) + b"Q"  # BINPERSID: the tuple is a persistent id.


def _tensor(storage, offset, size, stride, rebuild="_rebuild_tensor_v2"):
    hooks = _global("collections", "OrderedDict") + b")R"
    args = [storage, _int(offset), _tuple(*map(_int, size)), _tuple(*map(_int, stride))]
    if rebuild == "_rebuild_tensor_v2":
        args += [b"\x89", hooks]  # requires_grad=False, no backward hooks.
    return _global("torch._utils", rebuild) + _tuple(*args) + b"R"


def _parameter(tensor):
    hooks = _global("collections", "OrderedDict") + b")R"
    return _global("torch._utils", "_rebuild_parameter") + _tuple(tensor, b"\x88", hooks) + b"R"


def _pickle(body):
    return b"\x80\x02" + body + b"."


WEIGHT = np.arange(6, dtype="float32").reshape(2, 3) / 4
STATS = np.array([9.0, 8.0, 7.0, 6.0], dtype="float32")
HALF = np.array([0.5, -2.0, 1024.0], dtype="float16")
BRAIN = np.array([1.5, -3.0], dtype=ml_dtypes.bfloat16)


def _state_pickle(legacy):
    """A state dict of five tensors over four storages, one of them shared."""
    weight = lambda: _storage("FloatStorage", "w", 6, legacy)  # noqa: E731
    items = [
        ("conv.weight", _parameter(_tensor(weight(), 0, (2, 3), (3, 1)))),
        # The transpose shares the kernel's storage, with swapped strides.
        ("conv.weight_t", _tensor(weight(), 0, (3, 2), (1, 3))),
        ("bn.running_mean", _tensor(_storage("FloatStorage", "s", 4, legacy), 2, (2,), (1,))),
        ("bn.num_batches_tracked",
         _tensor(_storage("LongStorage", "n", 1, legacy), 0, (), (), rebuild="_rebuild_tensor")),
        ("half", _tensor(_storage("HalfStorage", "h", 3, legacy), 0, (3,), (1,))),
        ("brain", _tensor(_storage("BFloat16Storage", "b", 2, legacy), 0, (2,), (1,))),
    ]
    return _pickle(_ordered_dict(items))


STORAGES = {"w": WEIGHT, "s": STATS, "n": np.array([7], "int64"), "h": HALF, "b": BRAIN}


def _raw(array, byteorder="<"):
    if array.dtype.itemsize > 1 and array.dtype != ml_dtypes.bfloat16:
        array = array.astype(array.dtype.newbyteorder(byteorder))
    return array.tobytes()


def _legacy_file(path, body, keys, storages=STORAGES, little_endian=True):
    byteorder = "<" if little_endian else ">"
    sys_info = {"protocol_version": 1001, "little_endian": little_endian,
                "type_sizes": {"short": 2, "int": 4, "long": 8}}
    data = pickle.dumps(LEGACY_MAGIC, protocol=2) + pickle.dumps(1001, protocol=2)
    data += pickle.dumps(sys_info, protocol=2) + body + pickle.dumps(keys, protocol=2)
    for key in keys:
        data += struct.pack("<q", storages[key].size) + _raw(storages[key], byteorder)
    path.write_bytes(data)
    return path


def _zip_file(path, body, storages=STORAGES):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("checkpoint/data.pkl", body)
        archive.writestr("checkpoint/byteorder", "little")
        archive.writestr("checkpoint/version", "3\n")
        for key, array in storages.items():
            archive.writestr(f"checkpoint/data/{key}", _raw(array))
    return path


def _assert_state(state):
    assert isinstance(state, collections.OrderedDict)
    assert list(state) == ["conv.weight", "conv.weight_t", "bn.running_mean",
                           "bn.num_batches_tracked", "half", "brain"]
    np.testing.assert_array_equal(state["conv.weight"], WEIGHT)
    np.testing.assert_array_equal(state["conv.weight_t"], WEIGHT.T)
    assert state["conv.weight_t"].flags.c_contiguous
    np.testing.assert_array_equal(state["bn.running_mean"], STATS[2:])
    assert state["bn.num_batches_tracked"].shape == ()
    assert state["bn.num_batches_tracked"].dtype == np.int64
    assert int(state["bn.num_batches_tracked"]) == 7
    assert state["half"].dtype == np.float16
    np.testing.assert_array_equal(state["half"], HALF)
    assert state["brain"].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(state["brain"].astype("float32"), [1.5, -3.0])


def test_reads_legacy_format(tmp_path):
    # Storages follow in the order of the key list, not of first use.
    path = _legacy_file(tmp_path / "legacy.pth", _state_pickle(legacy=True),
                        keys=["s", "b", "w", "h", "n"])
    _assert_state(load_torch_checkpoint(path))


def test_reads_big_endian_legacy_format(tmp_path):
    path = _legacy_file(tmp_path / "big.pth", _state_pickle(legacy=True),
                        keys=["w", "s", "n", "h", "b"], little_endian=False)
    state = load_torch_checkpoint(str(path))
    np.testing.assert_array_equal(state["conv.weight"], WEIGHT)
    assert int(state["bn.num_batches_tracked"]) == 7


def test_reads_legacy_storage_views(tmp_path):
    # torch < 1.0 saved a view into a storage as (view key, offset, size).
    body = _pickle(_ordered_dict([
        ("tail", _tensor(_storage("FloatStorage", "s", 4, True, view=("v", 1, 3)), 1, (2,), (1,))),
    ]))
    path = _legacy_file(tmp_path / "view.pth", body, keys=["s"])
    np.testing.assert_array_equal(load_torch_checkpoint(path)["tail"], STATS[2:])


def test_reads_zip_format(tmp_path):
    path = _zip_file(tmp_path / "new.pt", _state_pickle(legacy=False))
    _assert_state(load_torch_checkpoint(path))


def test_reads_nested_checkpoint(tmp_path):
    # Training scripts often save {"epoch": ..., "state_dict": ...}.
    inner = _ordered_dict([("w", _tensor(_storage("FloatStorage", "w", 6, True), 0, (6,), (1,)))])
    body = _pickle(b"}(" + _str("epoch") + _int(3) + _str("state_dict") + inner + b"u")
    state = load_torch_checkpoint(_legacy_file(tmp_path / "nested.pth", body, keys=["w"]))
    assert state["epoch"] == 3
    np.testing.assert_array_equal(state["state_dict"]["w"], WEIGHT.ravel())


def test_refuses_classes_a_state_dict_does_not_need(tmp_path):
    # Plain pickle would call os.system here.
    body = _pickle(_global("os", "system") + _tuple(_str("echo owned")) + b"R")
    path = _legacy_file(tmp_path / "evil.pth", body, keys=[])
    with pytest.raises(KftError, match=r"holds a os\.system object.*state_dict\(\)"):
        load_torch_checkpoint(path)


def test_refuses_pickled_modules(tmp_path):
    body = _pickle(_tuple(_str("module"), _str("Net"), _str("net.py"), _str("source")) + b"Q")
    path = _legacy_file(tmp_path / "module.pth", body, keys=[])
    with pytest.raises(KftError, match=r"refers to an object kft cannot read.*state_dict\(\)"):
        load_torch_checkpoint(path)


def test_not_a_torch_file(tmp_path):
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(KftError, match="no torch magic number"):
        load_torch_checkpoint(path)
    path.write_bytes(b"\x00garbage" * 8)
    with pytest.raises(KftError, match="is not a readable torch.save checkpoint"):
        load_torch_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(KftError, match="does not exist"):
        load_torch_checkpoint(tmp_path / "nope.pth")


def test_truncated_storage(tmp_path):
    path = _legacy_file(tmp_path / "cut.pth", _state_pickle(legacy=True),
                        keys=["w", "s", "n", "h", "b"])
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(KftError, match="truncated: storage 'b' is incomplete"):
        load_torch_checkpoint(path)


def test_tensor_past_its_storage(tmp_path):
    body = _pickle(_ordered_dict([
        ("w", _tensor(_storage("FloatStorage", "w", 6, True), 2, (2, 3), (3, 1))),
    ]))
    path = _legacy_file(tmp_path / "bad.pth", body, keys=["w"])
    with pytest.raises(KftError, match="runs past its storage of 6 elements"):
        load_torch_checkpoint(path)


def test_zip_without_data_pickle(tmp_path):
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(KftError, match=r"not a torch.save checkpoint \(it has no single"):
        load_torch_checkpoint(path)
