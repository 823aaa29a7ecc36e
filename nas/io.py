"""Loading specs by name or path, and atomic file writes (nothing half-written on failure)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from nas.errors import InputError
from nas.spec import NetworkSpec, SpecError
from nas.zoo import NAMES, get


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
                f"spec: {name_or_path!r} is neither a registry name ({', '.join(NAMES)}) nor an existing JSON file"
            )
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as error:
            raise SpecError(f"spec: cannot read {name_or_path}: {error}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise SpecError(f"spec {name_or_path}: malformed JSON: {error.msg} at line {error.lineno} column {error.colno}") from None
        if isinstance(data, dict) and "spec" in data and "provenance" in data:
            data = data["spec"]  # an `nas export` file: spec plus provenance
        try:
            spec = NetworkSpec.from_dict(data)
        except SpecError as error:
            raise SpecError(f"spec {name_or_path}: {error}") from None
    return spec.with_classes(num_classes) if num_classes is not None else spec


def atomic_write_text(path: str | os.PathLike[str], text: str, overwrite: bool = True) -> Path:
    """Write ``text`` to ``path`` via a temporary file and a rename, so readers never see half a file."""
    path = Path(path)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} exists; pass --force to overwrite")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a written file should read like any other
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | os.PathLike[str], data: Any, overwrite: bool = True) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n", overwrite=overwrite)


def load_config_file(path: str | os.PathLike[str], what: str = "config") -> dict[str, Any]:
    """Read a YAML (``.yaml``/``.yml``), TOML (``.toml``) or JSON config file into a dict."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what}: file {str(path)!r} does not exist")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise InputError(f"{what}: {path.name} has an unknown extension, allowed .yaml, .yml, .toml, .json")
    except InputError:
        raise
    except Exception as error:  # yaml / toml / json parse errors differ in type; all are bad input
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"{what}: cannot parse {path.name}: {first}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(f"{what}: {path.name} must hold a mapping at the top level")
    return data
