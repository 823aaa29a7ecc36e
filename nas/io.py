"""Loading specs and config files, checking output paths, and the one atomic writer every output goes through.

Outputs are written to a temporary file beside the target, flushed, fsynced and renamed over it, so a
reader (or a resume after a kill) never sees half a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from nas.errors import InputError
from nas.spec import NetworkSpec, SpecError
from nas.zoo import NAMES, get

# ANSI escape sequences (CSI, OSC, two-byte) and every other C0/C1 control except newline and tab
_CONTROL = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b.?|[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def load_spec(name_or_path: str, num_classes: int | None = None) -> NetworkSpec:
    """A registry name (``efficientnetv2-b0``) or a path to a spec JSON (an ``nas export`` file works too).

        >>> load_spec("efficientnetv2-b0", num_classes=10).num_classes
        10
    """
    if name_or_path in NAMES:
        spec = get(name_or_path)
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise SpecError(
                f"spec: {name_or_path!r} is neither a registry name nor an existing JSON file, "
                f"allowed {', '.join(NAMES)} or a path to a spec JSON"
            )
        text = read_text_file(path, "spec")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise SpecError(f"spec {name_or_path}: malformed JSON: {error.msg} at line {error.lineno} column {error.colno}, "
                            "allowed a spec JSON object") from None
        if not isinstance(data, dict):
            raise SpecError(f"spec {name_or_path}: holds a JSON {type(data).__name__}, allowed a spec JSON object") from None
        if "spec" in data and "provenance" in data:
            data = data["spec"]  # an `nas export` file: spec plus provenance
        try:
            spec = NetworkSpec.from_dict(data)
        except SpecError as error:
            raise SpecError(f"spec {name_or_path}: {error}") from None
    return spec.with_classes(num_classes) if num_classes is not None else spec


def read_text_file(path: str | os.PathLike[str], what: str) -> str:
    """The UTF-8 text of ``path``; unreadable or non-UTF-8 files are an InputError naming ``what`` and the file."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise InputError(f"{what}: {path} is not UTF-8 text (byte {error.start}), allowed a UTF-8 file") from None
    except OSError as error:
        raise InputError(f"{what}: cannot read {path}: {error.strerror or error}") from None


def read_json_mapping(path: str | os.PathLike[str], what: str) -> dict[str, Any]:
    """A JSON file that must hold an object (a string, list or number is an InputError naming the file)."""
    try:
        data = json.loads(read_text_file(path, what))
    except json.JSONDecodeError as error:
        raise InputError(f"{what}: {path} is malformed JSON: {error.msg} at line {error.lineno}, allowed a JSON object") from None
    if not isinstance(data, dict):
        raise InputError(f"{what}: {path} holds a JSON {type(data).__name__}, allowed a JSON object")
    return data


def safe_name(name: str) -> str:
    """``name`` made safe as one file-name component: only letters, digits, ``_ . -``; never ``..`` or hidden.

        >>> safe_name("../../../x"), safe_name("b0 (tuned)")
        ('x', 'b0_tuned')
    """
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("._-")
    cleaned = re.sub(r"\.{2,}", ".", cleaned)[:100].strip("._-")
    return cleaned or "spec"


def printable(text: str) -> str:
    """``text`` without ANSI escapes and control characters (newlines and tabs stay), for the terminal.

        >>> printable("b0\\x1b[31mred\\x1b[0m\\x07")
        'b0red'
    """
    return _CONTROL.sub("", text)


def _nearest_existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not os.path.lexists(path):
        path = path.parent
    return path


def _writable_dir(directory: Path) -> bool:
    """A real probe (os.access says yes to root on read-only and pseudo file systems)."""
    try:
        with tempfile.TemporaryFile(dir=directory):
            return True
    except OSError:
        return False


def check_output_dir(path: str | os.PathLike[str], option: str) -> Path:
    """An output directory: an existing writable directory, or creatable (its nearest existing ancestor is one).

    Creates nothing; raises InputError naming ``option``.
    """
    path = Path(path)
    if os.path.lexists(path) and not path.is_dir():
        raise InputError(f"{option}: {path} exists and is not a directory, allowed a directory path")
    anchor = _nearest_existing(path)
    if not anchor.is_dir():
        raise InputError(f"{option}: {path} is under {anchor}, which is a file, allowed a directory path")
    if not _writable_dir(anchor):
        raise InputError(f"{option}: {anchor} is not writable, allowed a writable directory")
    return path


def check_output_file(path: str | os.PathLike[str], option: str, force: bool = False) -> Path:
    """An output file: its parent directory exists and is writable; an existing file needs ``force``.

    Creates nothing; raises InputError naming ``option`` (a directory, a missing parent, a parent that is a file...).
    """
    path = Path(path)
    if str(path) in ("", ".") or path.name in ("", ".", ".."):
        raise InputError(f"{option}: {str(path)!r} is not allowed, allowed a file path")
    if path.is_dir():
        raise InputError(f"{option}: {path} is a directory, allowed a file path")
    if os.path.lexists(path) and not path.is_file():
        raise InputError(f"{option}: {path} exists and is not a regular file, allowed a file path")
    parent = path.parent
    if not parent.is_dir():
        what = "is not a directory" if os.path.lexists(parent) else "does not exist"
        raise InputError(f"{option}: the directory {parent} {what}, allowed a path in an existing directory")
    if path.exists() and not force:
        raise InputError(f"{option}: {path} exists, allowed a new path or --force to overwrite")
    if not _writable_dir(parent):
        raise InputError(f"{option}: {parent} is not writable, allowed a path in a writable directory")
    return path


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on a clean exit it is fsynced and renamed over ``path``.

    The one writer of every output (JSON, HTML, checkpoints): on any error the target is untouched.

        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
        >>> with atomic_open(target) as f:
        ...     _ = f.write("hello")
        >>> target.read_text()
        'hello'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a written file should read like any other
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str, overwrite: bool = True) -> Path:
    """Write ``text`` to ``path`` atomically; ``overwrite=False`` refuses an existing file (FileExistsError)."""
    path = Path(path)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} exists, allowed a new path or --force to overwrite")
    with atomic_open(path) as handle:
        handle.write(text)
    return path


def atomic_write_json(path: str | os.PathLike[str], data: Any, overwrite: bool = True) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n", overwrite=overwrite)


def load_config_file(path: str | os.PathLike[str], what: str = "config") -> dict[str, Any]:
    """Read a YAML (``.yaml``/``.yml``), TOML (``.toml``) or JSON config file into a dict."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what}: {str(path)!r} is not a file, allowed a YAML, TOML or JSON file")
    if path.suffix not in (".toml", ".yaml", ".yml", ".json"):
        raise InputError(f"{what}: {path.name} has an unknown extension, allowed .yaml, .yml, .toml, .json")
    text = read_text_file(path, what)
    try:
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as error:  # yaml / toml / json parse errors differ in type; all are bad input
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"{what}: cannot parse {path.name}: {first}, allowed valid {path.suffix.lstrip('.').upper()}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(f"{what}: {path.name} holds a {type(data).__name__} at the top level, allowed a mapping")
    return data
