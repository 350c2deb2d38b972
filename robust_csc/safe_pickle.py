"""Reading pickles without running their code.

Two kinds of pickle reach the project from users' folders:

- CIFAR's python batches (dicts of bytes, str, ints, lists and numpy arrays):
  ``load_numpy_pickle`` reads them with an unpickler that admits only the
  few callables numpy's own array pickles name (``_reconstruct``,
  ``_frombuffer``, ``scalar``, ``dtype``); anything else - ``os.system``,
  ``builtins.exec``, a class of any module - is refused before it is looked
  up, so no code of the file ever runs.
- PyTorch ``.pt`` files: ``load_torch_file`` reads them only with
  ``torch.load(weights_only=True)``, after naming every callable the pickle
  imports (found by a dry run that looks nothing up), so a file that would
  run code is called what it is, and a plain file in pickle protocol 4 or 5
  (which torch's weights-only reader cannot parse) is told apart from a
  truncated one.

The standard library's ``pickle.Unpickler.find_class`` is the documented
hook for restricting globals; numpy offers no safe loader for these files
(``np.load(allow_pickle=True)`` runs arbitrary code), hence this module.
"""

from __future__ import annotations

import codecs
import io
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from robust_csc.errors import RobustCSCError
from robust_csc.validation import regular_file


class UnsafePickleError(RobustCSCError):
    """A pickle that names something outside the admitted set: it would run code if loaded unrestricted."""


# ---------------------------------------------------------------- numpy pickles (CIFAR batches)


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # Python 3 pickles bytes in protocol 2 as _codecs.encode(text, "latin1"); no other codec is admitted
    # (codecs such as "zlib" or "bz2" would turn a small file into a large object).
    if codecs.lookup(encoding).name != "iso8859-1" or errors != "strict":
        raise UnsafePickleError(f"_codecs.encode with codec {encoding!r}")
    return codecs.encode(text, "latin1")


class _ArraySubtype:
    """Stands for numpy.ndarray: _reconstruct may name it, nothing may call it."""


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    # numpy pickles an array as _reconstruct(ndarray, (0,), b"b") + __setstate__(shape, dtype, raw bytes):
    # only that empty start is built here, so the array can never be larger than the bytes of the file.
    if not isinstance(subtype, _ArraySubtype):
        raise pickle.UnpicklingError("_reconstruct of something other than numpy.ndarray")
    return np.ndarray((0,), dtype=np.uint8)


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    # Protocol 5 arrays: a view of bytes that are in the file.
    if not isinstance(buffer, (bytes, bytearray, pickle.PickleBuffer)) or not isinstance(dtype, np.dtype):
        raise pickle.UnpicklingError("_frombuffer with arguments numpy never writes")
    return np.frombuffer(buffer, dtype=dtype).reshape(shape, order=order)


def _scalar(dtype: Any, data: Any = None) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise pickle.UnpicklingError("a numpy scalar that is not a plain number")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _dtype(spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
    if not isinstance(spec, str):
        raise pickle.UnpicklingError("a numpy dtype spelled other than by its type code")
    dtype = np.dtype(spec)
    if dtype.hasobject:
        raise UnsafePickleError("a numpy array of Python objects (each one unpickled in turn)")
    return dtype


# What numpy's own pickles name (numpy 1.x and 2.x spell the module differently).
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("numpy", "ndarray"): _ArraySubtype(),
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _latin1_encode,
}

# The types a numpy pickle's result may hold once built.
_PLAIN = (dict, list, tuple, bytes, bytearray, str, int, float, bool, type(None), np.ndarray, np.generic)
MAX_DEPTH = 32  # CIFAR batches are two levels deep


class _NumpyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        admitted = _NUMPY_GLOBALS.get((module, name))
        if admitted is None:
            raise UnsafePickleError(f"{module}.{name}")
        return admitted

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids")


def _check_plain(obj: Any, where: str) -> None:
    """Every object reached is of a plain type, and arrays hold numbers (checked without recursion)."""
    stack = [(obj, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise RobustCSCError(f"{where} nests data more than {MAX_DEPTH} levels deep, which the published files never do")
        if not isinstance(item, _PLAIN):
            raise RobustCSCError(f"{where} holds a {type(item).__name__}, which the published files never do")
        if isinstance(item, np.ndarray) and item.dtype.hasobject:
            raise RobustCSCError(f"{where} holds an array of Python objects, which the published files never do")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for pair in item.items() for v in pair)
        elif isinstance(item, (list, tuple)):
            stack.extend((v, depth + 1) for v in item)


def load_numpy_pickle(path: str | Path, *, what: str, fix: str, encoding: str = "latin1") -> Any:
    """A pickle of plain data and numpy arrays, read without running code.

    what names the file in messages ("CIFAR-10 file <path>"), fix says what to do.
    A pickle naming anything else raises UnsafePickleError; a damaged one a
    RobustCSCError saying it is corrupt.
    """
    regular_file(path, "pickle", fix)  # a FIFO would block the read forever
    try:
        with open(path, "rb") as f:
            obj = _NumpyUnpickler(f, encoding=encoding).load()
    except UnsafePickleError as err:
        raise UnsafePickleError(
            f"{what} is not a plain data pickle: it names {err}, code that would run on load, "
            f"so it was refused unread; {fix}"
        ) from None
    except OSError as err:
        raise RobustCSCError(f"could not read {what} ({err.strerror or err}); fix its permissions or {fix}") from None
    except (MemoryError, RecursionError):
        raise RobustCSCError(f"{what} builds an object too large to read; {fix}") from None
    except Exception as err:  # damaged bytes fail the unpickler in many ways (EOFError, KeyError, ValueError, ...)
        raise RobustCSCError(f"{what} is corrupt ({type(err).__name__}); {fix}") from None
    _check_plain(obj, what)
    return obj


# ---------------------------------------------------------------- PyTorch files


class _Anything:
    """What the dry run gives for every global: calling, building or filling it yields more of the same."""

    def __new__(cls, *args: Any, **kwargs: Any) -> "_Anything":  # NEWOBJ calls cls.__new__(cls, ...) on it
        return object.__new__(_Anything)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> "_Anything":
        return _Anything()

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass

    def add(self, value: Any) -> None:
        pass


class _NamingUnpickler(pickle._Unpickler):
    """A dry run that records every global the pickle names and looks none of them up.

    The pure-Python unpickler: the C one refuses NEWOBJ on a stand-in that is
    not a class, which would end the dry run before the names after it.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def _refuse_bytearray8(self) -> None:
        # bytearray(n) is zero-filled before the n bytes are read: a length field alone could fill memory.
        raise pickle.UnpicklingError("BYTEARRAY8 (protocol 5 out-of-band data, which torch never writes)")

    dispatch[pickle.BYTEARRAY8[0]] = _refuse_bytearray8

    def __init__(self, file: BinaryIO) -> None:
        super().__init__(file, encoding="latin1")
        self.names: list[str] = []

    def find_class(self, module: str, name: str) -> Any:
        self.names.append(f"{module}.{name}")
        return _Anything()

    def persistent_load(self, pid: Any) -> Any:
        return _Anything()


SCAN_BYTES = 64 << 20  # the pickles of a .pt file name its tensors, not hold them: a few kB to MB


def _scan(stream: BinaryIO, pickles: int) -> tuple[list[str], int]:
    """(names, highest protocol) of up to `pickles` pickles read one after another from stream."""
    names: list[str] = []
    protocol = 0
    for _ in range(pickles):
        start = stream.tell()
        head = stream.read(2)
        stream.seek(start)
        if len(head) == 2 and head[0] == pickle.PROTO[0]:
            protocol = max(protocol, head[1])
        reader = _NamingUnpickler(stream)
        try:
            reader.load()
        except Exception:  # the raw tensor bytes after the last pickle, or damage: the names so far count
            names.extend(reader.names)
            break
        names.extend(reader.names)
    return names, protocol


def torch_pickle_globals(path: str | Path) -> tuple[list[str], int]:
    """(every global a .pt file's pickles name, the highest pickle protocol among them); no code runs.

    The zip format holds one pickle (data.pkl); the legacy format several one
    after another (magic number, version, system info, the object, storage
    keys), followed by raw tensor bytes that end the dry run.
    """
    path = Path(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            members = [n for n in archive.namelist() if n.endswith("data.pkl")]
            if not members:
                return [], 0
            with archive.open(members[0]) as member:  # at most what the header declares, and SCAN_BYTES
                return _scan(io.BytesIO(member.read(SCAN_BYTES)), 1)
    with open(path, "rb") as f:  # the pickles come first; the tensor bytes after them need no scan
        return _scan(io.BytesIO(f.read(SCAN_BYTES)), 5)


def _torch_allowed() -> tuple[set[str], bool]:
    """(the globals torch.load(weights_only=True) accepts, whether that list is torch's own).

    torch keeps its allowlist in a private helper; without it, names under
    torch. are let through this pre-scan (torch's own check still refuses).
    """
    import torch

    allowed: set[str] = set()
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        allowed |= set(_get_allowed_globals())
        exact = True
    except (ImportError, AttributeError):
        exact = False
    for item in torch.serialization.get_safe_globals():
        obj = item[0] if isinstance(item, tuple) else item
        allowed.add(f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', getattr(obj, '__name__', ''))}")
    return allowed, exact


def load_torch_file(
    path: str | Path, *, map_location: Any = "cpu", what: str, fix: str, kind: str = "PyTorch file"
) -> Any:
    """torch.load(path, weights_only=True), refusing a file that names code before torch reads it.

    Raises UnsafePickleError for a pickle that would run code, RobustCSCError
    for a file torch cannot read (naming pickle protocols 4 and 5, which the
    weights-only reader does not support); torch's warnings stay silent.
    """
    import torch

    path = regular_file(path, "PyTorch", fix)  # a FIFO would block the read forever
    try:
        names, protocol = torch_pickle_globals(path)
    except OSError as err:
        raise RobustCSCError(f"could not read {what} ({err.strerror or err}); {fix}") from None
    except Exception:  # a damaged zip container (BadZipFile, zlib.error, EOFError, ...)
        raise RobustCSCError(f"{what} is truncated or not a {kind}; {fix}") from None
    allowed, exact = _torch_allowed()
    unsafe = [n for n in dict.fromkeys(names) if n not in allowed and (exact or not n.startswith("torch."))]
    if unsafe:
        raise UnsafePickleError(
            f"{what} contains code that would run on load ({', '.join(unsafe[:3])}); only plain state_dicts are "
            "accepted, so re-save it from a trusted environment with torch.save(model.state_dict(), path)"
        )
    try:
        with warnings.catch_warnings():
            # torch warns about protocols above 2 before failing on them; the message below says it instead.
            warnings.filterwarnings("ignore", message=".*pickle protocol", category=UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        named = re.search(r"GLOBAL (\S+)", str(err))
        if named is not None:
            raise UnsafePickleError(
                f"{what} contains code that would run on load ({named.group(1)}); only plain state_dicts are "
                "accepted, so re-save it from a trusted environment with torch.save(model.state_dict(), path)"
            ) from None
        if protocol > 2:
            raise RobustCSCError(
                f"{what} was written with pickle protocol {protocol}, which torch.load(weights_only=True) cannot "
                "read; re-save it with torch.save(obj, path) and its default protocol"
            ) from None
        raise RobustCSCError(f"{what} is truncated or not a {kind}; {fix}") from None
    except Exception:  # damaged bytes make the unpickler fail in arbitrary ways (IndexError, KeyError, ...)
        raise RobustCSCError(f"{what} is truncated or not a {kind}; {fix}") from None


__all__ = ["UnsafePickleError", "load_numpy_pickle", "load_torch_file", "torch_pickle_globals"]
