"""On-disk cache of the symbolic engine's compiled derivations.

Deriving a layer with SymPy and compiling it with ``lambdify(cse=True)`` dominates a run;
the result -- the generated Python source of each compiled function plus a few index
arrays -- is stored so that the next run (or another process of the same run) loads it
instead of deriving again.

**Keys.** ``sha256`` of what was derived (the layer's class and options, its input shape,
the cell or loss description) together with the versions of derivcheck, SymPy, numpy and
Python, a fingerprint of derivcheck's own source files and :data:`FORMAT`: a changed case,
an upgrade or an edited layer never meets an old entry.

**Location.** ``--cache-dir``, else ``$DERIVCHECK_CACHE_DIR``, else the platform's user
cache folder (``platformdirs.user_cache_dir("derivcheck")``: ``~/.cache/derivcheck`` on
Linux). ``DERIVCHECK_CACHE=off`` (or ``--no-cache``) disables it.

**Safety.** Entries are JSON, written to a temporary file and renamed into place (readers
see the old entry or the new one, never a torn file; concurrent writers of the same key
leave one valid entry). Each entry carries an HMAC-SHA256 of its content under a random
key created once per cache folder (file ``key``, mode 0600): an entry whose MAC does not
verify -- edited, truncated, copied from elsewhere -- is deleted and rebuilt, and its source
is never executed. Before anything is stored its source is checked against a whitelist
of syntax (the shape ``lambdify`` generates: no imports, no attribute access, no dunder
names) and compiled; the signed entry holds that code object (``marshal``, which is why
the Python version is part of the key), so a warm load neither parses nor compiles.

**Concurrent builders.** :func:`cached` takes an exclusive lock on the entry's key
(``fcntl.flock`` on a ``.lock`` file beside it, where the platform has it) before deriving:
with ``-j N`` or Dask workers sharing the folder, a layer that several cases need is
derived by one process while the others wait and then load it, instead of all deriving it.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import hmac
import json
import marshal
import os
import secrets
import stat
import sys
import time
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

FORMAT = 1
ENV_DIR = "DERIVCHECK_CACHE_DIR"
ENV_SWITCH = "DERIVCHECK_CACHE"
_SUFFIX = ".json"

_settings: dict[str, Any] = {"directory": None, "enabled": None}
_pending: set[str] = set()
"""Temporary entry files being written (removed on SIGTERM/SIGINT by :func:`remove_pending`)."""


def remove_pending() -> None:
    """Delete the temporary files of entries still being written (an interrupted run)."""
    for tmp in list(_pending):
        try:
            os.unlink(tmp)
        except OSError:
            pass
        _pending.discard(tmp)


_stats = {"hits": 0, "misses": 0, "rejected": 0, "writes": 0}


def configure(directory: str | Path | None = None, *, enabled: bool | None = None) -> None:
    """Set the cache folder and/or switch the cache on or off for this process (the CLI's
    ``--cache-dir`` / ``--no-cache``); ``None`` leaves the environment's choice."""
    if directory is not None:
        _settings["directory"] = Path(directory)
    if enabled is not None:
        _settings["enabled"] = enabled


def cache_dir() -> Path:
    """The folder in use (see the module docstring)."""
    if _settings["directory"] is not None:
        return Path(_settings["directory"])
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR])
    try:
        from platformdirs import user_cache_dir
    except ImportError:  # pragma: no cover - platformdirs is a dependency
        return Path.home() / ".cache" / "derivcheck"
    return Path(user_cache_dir("derivcheck", appauthor=False))


def enabled() -> bool:
    if _settings["enabled"] is not None:
        return bool(_settings["enabled"])
    return os.environ.get(ENV_SWITCH, "on").lower() not in ("off", "0", "false", "no")


def stats() -> dict[str, int]:
    """Hits, misses, rejected (tampered or unreadable) entries and writes in this process."""
    return dict(_stats)


_fingerprint: str | None = None


def _source_fingerprint() -> str:
    global _fingerprint
    if _fingerprint is None:
        digest = hashlib.sha256()
        root = Path(__file__).resolve().parent
        for path in sorted(root.rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
        _fingerprint = digest.hexdigest()
    return _fingerprint


def _installed_version(distribution: str) -> str:
    """The installed version of `distribution`, read from its metadata (importing SymPy
    only to ask would cost a warm run ~0.3 s)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:  # pragma: no cover - a source checkout without metadata
        return str(__import__(distribution).__version__)


_versions: dict[str, str] | None = None


def versions() -> dict[str, str]:
    """Everything besides the content that an entry depends on."""
    global _versions
    if _versions is None:
        from derivcheck._version import __version__

        _versions = {
            "format": str(FORMAT), "derivcheck": __version__, "sympy": _installed_version("sympy"),
            "numpy": _installed_version("numpy"), "python": "%d.%d" % sys.version_info[:2], "source": _source_fingerprint(),
        }  # fmt: skip
    return dict(_versions)


def entry_key(kind: str, content: str) -> str:
    """The file name stem of an entry: sha256 of kind, content and :func:`versions`."""
    text = json.dumps({"kind": kind, "content": content, "versions": versions()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _secret(directory: Path) -> bytes:
    """The folder's MAC key (created on first use). A key file of any other shape -- not
    hex, a folder, a special file -- is replaced by a fresh one: the entries it signed then
    fail their MAC and are rebuilt."""
    path = directory / "key"
    text = _read_regular(path, 4096)
    if text is not None:
        try:
            return _parse_secret(text)
        except ValueError:
            pass
        _remove(path)
    elif path.exists() or path.is_symlink():
        _remove(path)
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".key-")
    try:
        os.write(fd, secrets.token_hex(32).encode())
        os.close(fd)
        os.chmod(tmp, 0o600)
        try:
            os.link(tmp, path)  # atomic and exclusive: the first writer's key wins
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)
    text = _read_regular(path, 4096)
    if text is None:
        raise OSError(f"the cache key {path} could not be read back")
    return _parse_secret(text)


def _parse_secret(text: bytes) -> bytes:
    secret = bytes.fromhex(text.decode("ascii").strip())
    if len(secret) < 16:
        raise ValueError("cache key too short")
    return secret


MAX_ENTRY_BYTES = 256 * 1024 * 1024
"""An entry larger than this is corrupt (the largest real ones are a few MB)."""


def _read_regular(path: Path, limit: int) -> bytes | None:
    """The bytes of `path` if it is a regular file (no link followed, no FIFO or device
    opened in a blocking way) of at most `limit` bytes; ``None`` otherwise."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
            return None
        from derivcheck.data_paths import read_at_most

        return read_at_most(fd, limit)
    except OSError:
        return None
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    """Delete `path` whatever it is (file, link, FIFO, folder); errors ignored."""
    try:
        if path.is_dir() and not path.is_symlink():
            import shutil

            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()
    except OSError:
        pass


def _mac(secret: bytes, payload: str) -> str:
    return hmac.new(secret, payload.encode(), hashlib.sha256).hexdigest()


class Storable(Protocol):
    def to_record(self) -> dict[str, Any]: ...


S = TypeVar("S", bound=Storable)


def cached(kind: str, content: str, build: Callable[[], S], restore: Callable[[dict[str, Any]], S]) -> S:
    """The object for `content`: restored from its entry (``restore(record)``), else built
    (``build()``) and its ``to_record()`` stored. Only one process at a time builds a given
    entry; the others wait for it and load what it stored."""
    record = load(kind, content)
    if record is not None:
        return restore(record)
    if not enabled():
        return build()
    with _building(entry_key(kind, content)):
        record = load(kind, content, count_miss=False)  # built by another process meanwhile?
        if record is not None:
            return restore(record)
        built = build()
        store(kind, content, built.to_record())
        return built


@contextmanager
def _building(key: str) -> Iterator[None]:
    """Hold the exclusive build lock of entry `key` (no lock where ``fcntl`` is missing or
    the folder is not writable: the entry is then possibly built twice, which is safe)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    directory = cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / f".{key}.lock", os.O_CREAT | os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0), 0o600)
    except OSError:
        yield
        return
    try:
        info = os.fstat(fd)
        locked = stat.S_ISREG(info.st_mode) and _acquire(fcntl, fd, directory / f".{key}.lock")
    except OSError:
        locked = False
    try:
        yield
    finally:
        if locked:
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


LOCK_TIMEOUT = 30.0
"""Seconds to wait for another process deriving the same entry (``$DERIVCHECK_LOCK_TIMEOUT``
overrides); then this process derives it as well, which is safe."""


_stuck: set[str] = set()
"""Holders this process gave up waiting for (a stopped or hung process)."""


def _acquire(fcntl: Any, fd: int, path: Path) -> bool:
    """Take the lock on `fd`, polling; a note on stderr after 5 s names the process that
    holds it, and after :data:`LOCK_TIMEOUT` the wait ends (returns False)."""
    try:
        timeout = float(os.environ.get("DERIVCHECK_LOCK_TIMEOUT", LOCK_TIMEOUT))
    except ValueError:
        timeout = LOCK_TIMEOUT
    if _stuck:  # a holder already failed to release one lock in time: do not wait the full time again
        timeout = min(timeout, 1.0)
    start, told = time.monotonic(), False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            waited = time.monotonic() - start
            if waited >= timeout:
                print(f"derivcheck: warning: gave up waiting after {waited:.0f} s for {_holder(path)}, which holds the lock {path}; deriving here as well", file=sys.stderr, flush=True)
                _stuck.add(_holder(path))
                return False
            if waited >= 5 and not told:
                print(f"derivcheck: waiting for {_holder(path)}, which is deriving the same entry (lock {path}; at most {timeout:.0f} s, DERIVCHECK_LOCK_TIMEOUT)", file=sys.stderr, flush=True)
                told = True
            time.sleep(0.05)
            continue
        try:  # say who holds it, for the next process that waits
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {_hostname()}\n".encode(), 0)
        except OSError:
            pass
        return True


def _hostname() -> str:
    import socket

    return socket.gethostname()


def _holder(path: Path) -> str:
    """``"process 1234 on host"`` as the lock file says, or ``"another process"``."""
    text = _read_regular(path, 256)
    try:
        pid, host = text.decode("ascii").split() if text else ("", "")
        return f"process {int(pid)} on {host}"
    except (ValueError, UnicodeDecodeError):
        return "another process"


def has(kind: str, content: str) -> bool:
    """Whether an entry for `content` is on disk (not verified: :func:`load` checks it)."""
    return enabled() and (cache_dir() / (entry_key(kind, content) + _SUFFIX)).is_file()


def load(kind: str, content: str, *, count_miss: bool = True) -> dict[str, Any] | None:
    """The stored record for `content`, or ``None`` (disabled, missing, or rejected:
    a rejected entry is deleted so that the caller's rebuild replaces it)."""
    if not enabled():
        return None
    directory = cache_dir()
    path = directory / (entry_key(kind, content) + _SUFFIX)
    if not (path.exists() or path.is_symlink()):
        _stats["misses"] += count_miss
        return None
    raw = _read_regular(path, MAX_ENTRY_BYTES)
    try:
        if raw is None:
            raise ValueError("not a readable regular file")
        wrapper = json.loads(raw.decode("utf-8"))
        payload = wrapper["payload"]
        if not isinstance(payload, str) or not hmac.compare_digest(str(wrapper["mac"]), _mac(_secret(directory), payload)):
            raise ValueError("MAC mismatch")
        record = json.loads(payload)
        if not isinstance(record, dict) or record.get("kind") != kind or record.get("content") != content:
            raise ValueError("entry for different content")
        if not isinstance(record.get("code"), dict) or not isinstance(record.get("functions"), dict) or set(record["code"]) != set(record["functions"]):
            raise ValueError("compiled code missing")
    except (ValueError, KeyError, TypeError, AttributeError, SyntaxError, RecursionError, MemoryError, OSError):
        # corrupt in any way (edited, truncated, not UTF-8, nested without end, a folder,
        # a FIFO, a link): delete it, so that the caller's rebuild replaces it
        _stats["rejected"] += 1
        _remove(path)
        return None
    _stats["hits"] += 1
    return record


def store(kind: str, content: str, record: dict[str, Any]) -> None:
    """Write `record` (JSON-serialisable; ``functions`` maps names to generated source)
    atomically. Failures to write (read-only folder, full disk) are ignored: the cache is
    an optimisation."""
    if not enabled():
        return
    directory = cache_dir()
    code = {}
    for name, source in record.get("functions", {}).items():
        check_source(source)  # only code of the shape lambdify generates is ever stored
        compiled = compile(source, "<derivcheck-cache>", "exec")
        if not _resolves_as_lambdify(compiled):
            return  # a restored copy could compute something else: keep it uncached
        code[name] = base64.b64encode(marshal.dumps(compiled)).decode()
    tmp: str | None = None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        payload = json.dumps({**record, "code": code, "kind": kind, "content": content}, sort_keys=True)
        text = json.dumps({"payload": payload, "mac": _mac(_secret(directory), payload)})
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".entry-", suffix=".tmp")
        _pending.add(tmp)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        target = directory / (entry_key(kind, content) + _SUFFIX)
        if target.is_dir() and not target.is_symlink():
            _remove(target)  # a folder where the entry belongs
        os.replace(tmp, target)
        _stats["writes"] += 1
    except (OSError, ValueError):
        return
    finally:
        if tmp is not None:
            _pending.discard(tmp)
            if os.path.lexists(tmp):
                _remove(Path(tmp))


def info() -> dict[str, Any]:
    """Folder, entry count and size (for ``derivcheck cache info``)."""
    directory = cache_dir()
    entries = [p for p in directory.glob("*" + _SUFFIX) if p.is_file() and not p.is_symlink()] if directory.is_dir() else []
    return {
        "directory": str(directory), "enabled": enabled(), "entries": len(entries),
        "bytes": sum(p.stat().st_size for p in entries), "versions": versions(),
    }  # fmt: skip


def clear() -> int:
    """Delete every entry (and the key); returns how many entries were removed."""
    directory = cache_dir()
    if not directory.is_dir():
        return 0
    removed = 0
    leftovers = list(directory.glob(".entry-*.tmp")) + list(directory.glob(".*.lock")) + [directory / "key"]
    for path in list(directory.glob("*" + _SUFFIX)) + leftovers:
        if path.exists() or path.is_symlink():
            _remove(path)
            removed += path.suffix == _SUFFIX and not (path.exists() or path.is_symlink())
    return removed


# -- generated source ------------------------------------------------------------------------

_ALLOWED_NODES = (
    ast.Module, ast.FunctionDef, ast.arguments, ast.arg, ast.Return, ast.Assign, ast.Name, ast.Load, ast.Store,
    ast.Call, ast.BinOp, ast.UnaryOp, ast.Constant, ast.List, ast.Tuple, ast.Subscript, ast.Slice, ast.Expr,
    ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow, ast.USub, ast.UAdd, ast.Mod, ast.FloorDiv,
    ast.Compare, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Eq, ast.NotEq, ast.BoolOp, ast.And, ast.Or, ast.Not,
    ast.IfExp, ast.keyword,
)  # fmt: skip


def check_source(source: str) -> None:
    """Raise :class:`ValueError` unless `source` is one plain function of the shape
    ``lambdify`` generates (names, arithmetic, calls of names, subscripts, literals)."""
    tree = ast.parse(source)
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.FunctionDef) or tree.body[0].decorator_list:
        raise ValueError("not a single plain function")
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED_NODES):
            raise ValueError(f"syntax not allowed in cached code: {type(node).__name__}")
        if isinstance(node, ast.Name) and node.id.startswith("__"):
            raise ValueError(f"name not allowed in cached code: {node.id}")
        if isinstance(node, ast.Call) and not isinstance(node.func, ast.Name):
            raise ValueError("only calls of plain names are allowed in cached code")


def function_source(fn: Callable[..., Any]) -> str:
    """The source ``lambdify`` generated for `fn`."""
    import inspect

    return inspect.getsource(fn)


_namespace: dict[str, Any] | None = None


def _fresh_namespace() -> dict[str, Any]:
    """A copy of the globals cached functions run with, built without SymPy: what
    ``lambdify(..., modules=NUMPY_MODULES)`` puts in its namespace (numpy and numpy.linalg's
    public names, SymPy's numpy translations, derivcheck's vectorised ``erf``) plus
    ``functools.reduce``, which its printer uses for ``Max``/``Min``. :func:`store` checks,
    for every global a function uses, that this namespace holds the very object lambdify's
    own namespace does, so a restored function computes exactly what the derived one did."""
    global _namespace
    if _namespace is None:
        import builtins
        import functools

        import numpy

        from derivcheck.expr import NUMPY_MODULES

        # ``from numpy import *`` without importing the submodules numpy loads on first
        # access (f2py, testing, ...: ~60 ms; generated code never names a module)
        namespace: dict[str, Any] = {}
        for module in (numpy, numpy.linalg):
            namespace.update({name: vars(module)[name] for name in module.__all__ if name in vars(module)})
        namespace.update({"I": 1j, "numpy": numpy, "Heaviside": numpy.heaviside, "Abs": abs})
        for module in NUMPY_MODULES:
            if isinstance(module, dict):
                namespace.update(module)
        namespace.update({"builtins": builtins, "range": range, "reduce": functools.reduce})
        _namespace = namespace
    return dict(_namespace)


def _global_names(code: Any) -> set[str]:
    """Names `code` (and the code objects nested in it) may look up as globals."""
    names = set(code.co_names)
    for constant in code.co_consts:
        if hasattr(constant, "co_names"):
            names |= _global_names(constant)
    return names


_lambdify_namespace: dict[str, Any] | None = None


def _resolves_as_lambdify(code: Any) -> bool:
    """Whether every global `code` uses means the same object in :func:`_fresh_namespace`
    as in the namespace ``lambdify`` gave the derived function."""
    global _lambdify_namespace
    if _lambdify_namespace is None:
        import functools

        from derivcheck._lazy import sympy as sp
        from derivcheck.expr import NUMPY_MODULES

        _lambdify_namespace = {**sp.lambdify([], 0, modules=NUMPY_MODULES).__globals__, "reduce": functools.reduce}
    _fresh_namespace()  # built once; read here, not copied
    assert _namespace is not None
    used = _global_names(code) - {code.co_names[0]}  # the module code's first name: the function it defines (as in _defined)
    return all(_namespace.get(name) is _lambdify_namespace[name] for name in used if name in _lambdify_namespace)


def _defined(code: Any, namespace: dict[str, Any], source: str) -> Callable[..., Any]:
    name = ast.parse(source).body[0].name if code is None else code.co_names[0]  # type: ignore[attr-defined]
    exec(code if code is not None else compile(source, "<derivcheck-cache>", "exec"), namespace)  # safe: whitelisted source, or code we compiled and signed
    return namespace[name]


def load_function(source: str) -> Callable[..., Any]:
    """Compile `source` after checking it against the whitelist (:func:`check_source`)."""
    check_source(source)
    return _defined(None, _fresh_namespace(), source)


def restore(record: dict[str, Any], name: str) -> Callable[..., Any]:
    """Function `name` of a record returned by :func:`load` (MAC-verified, so the code
    object it holds is the one :func:`store` compiled from whitelisted source)."""
    code = marshal.loads(base64.b64decode(record["code"][name]))
    return _defined(code, _fresh_namespace(), record["functions"][name])
