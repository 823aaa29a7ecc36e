"""Checks that run before anything is created: paths, storage, cluster address, devices, resources, memory.

Every check raises :class:`InputError` (exit 2) with one line naming the option or field and what is
allowed, and leaves nothing on disk. ``nas search`` calls :func:`check_sweep` before the run directory
exists and :func:`check_resources` right after Ray starts; the other commands call the device and
memory checks before they allocate.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from nas.errors import InputError
from nas.io import check_output_dir, read_json_mapping
from nas.plan import count_activations
from nas.spec import NetworkSpec, StageSpec
from rewards import RewardError, get_reward
from search_spaces import SearchSpace

DEVICES = "cpu, cuda, cuda:N"
CONNECT_TIMEOUT_S = 10


# ---- devices ---------------------------------------------------------------------------------
def check_device(value: str | None, option: str = "--device") -> str | None:
    """``cpu``, ``cuda`` or ``cuda:N`` present on this machine (None: the default choice).

        >>> check_device("cpu")
        'cpu'
    """
    if value is None:
        return None
    match = re.fullmatch(r"cpu|cuda(?::(\d{1,3}))?", value)
    if not match:
        raise InputError(f"{option}: {value!r} is not allowed, allowed {DEVICES}")
    if value.startswith("cuda"):
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InputError(f"{option}: {value!r} asked for but no CUDA device is available here, allowed cpu")
        if match.group(1) is not None and int(match.group(1)) >= count:
            raise InputError(f"{option}: {value!r} is not on this machine, allowed cpu, cuda, cuda:0..cuda:{count - 1}")
    return value


# ---- memory ----------------------------------------------------------------------------------
def activation_elements(spec: NetworkSpec, image_size: int, options: Sequence[Sequence[StageSpec]] | None = None) -> int:
    """Elements per image kept for backward by a training step of ``spec`` (input and every conv output).

    With ``options`` (each stage's alternatives, as in a search space), the largest over the alternatives.
    Read from the model's own layer plan (:func:`nas.plan.count_activations`).

        >>> from nas.zoo import get
        >>> activation_elements(get("efficientnetv2-b0", 10), 32) > 32 * 32 * 3
        True
    """
    return count_activations(spec, image_size, stage_options=options)


def available_memory(device: str | None) -> tuple[int, str] | None:
    """(bytes, where): the GPU's total memory, or the RAM available now (cgroup limit included); None if unknown."""
    import torch

    if device and device.startswith("cuda") or device is None and torch.cuda.is_available():
        if not torch.cuda.is_available():
            return None  # e.g. a driver without a GPU joining a cluster that has some
        index = int((device or "cuda").partition(":")[2] or 0)
        return torch.cuda.get_device_properties(index).total_memory, f"cuda:{index}"
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    with contextlib.suppress(OSError, ValueError):
        limit = int(Path("/sys/fs/cgroup/memory.max").read_text())
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        available = min(available, limit - used)
    return available, "cpu"


def check_memory(elements_per_image: int, batch_size: int, device: str | None, options: str) -> None:
    """Refuse a batch whose activations alone (4 bytes each, a lower bound) exceed the device's memory."""
    need, available = elements_per_image * batch_size * 4, available_memory(device)
    if available is None:
        return
    have, where = available
    if need > have:
        raise InputError(f"{options}: a training step needs at least {need / 2**30:,.1f} GiB of activations, "
                         f"{have / 2**30:,.1f} GiB is available on {where}, allowed a smaller image or batch size")


# ---- sweep: paths, storage, address ----------------------------------------------------------
def check_address(address: str) -> None:
    """A Ray cluster address must answer on its port (``auto`` is left to Ray)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except (OSError, OverflowError, ValueError) as error:
        reason = getattr(error, "strerror", None) or error
        raise InputError(f"address: cannot reach the Ray cluster at {address} ({reason}), "
                         f"allowed the HOST:PORT of a running `ray start --head`") from None


def _sqlite_path(url: str) -> str:
    return url.split("?", 1)[0].removeprefix("sqlite:///")


def check_storage(url: str, run_dir: Path) -> None:
    """SQLite: an existing database file, or a writable directory to create it in (nothing is created here).
    Other RDB URLs: the server answers and accepts the credentials (the password never appears in a message).
    """
    if url.startswith("sqlite"):
        path = _sqlite_path(url)
        if path in ("", ":memory:"):
            return
        file = Path(path)
        if file.is_dir():
            raise InputError(f"storage: {file} is a directory, allowed sqlite:///PATH of a database file")
        if file.exists():
            try:
                with contextlib.closing(sqlite3.connect(f"file:{file}?mode=ro", uri=True)) as db:
                    db.execute("PRAGMA schema_version")
            except sqlite3.Error as error:
                raise InputError(f"storage: {file} is not a readable SQLite database ({error}), allowed an Optuna SQLite file") from None
            if not os.access(file, os.W_OK):
                raise InputError(f"storage: {file} is not writable, allowed a writable SQLite file")
        elif file.parent.resolve() == run_dir.resolve():
            check_output_dir(run_dir, "storage")
        elif not file.parent.is_dir():
            raise InputError(f"storage: the directory {file.parent} does not exist, allowed sqlite:///PATH in an existing directory")
        else:
            check_output_dir(file.parent, "storage")
        return
    import sqlalchemy

    try:
        shown = sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        raise InputError("storage: the URL cannot be parsed, allowed sqlite:///PATH, postgresql://..., mysql://...") from None
    try:
        engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": CONNECT_TIMEOUT_S})
        with engine.connect():
            pass
        engine.dispose()
    except ModuleNotFoundError as error:
        raise InputError(f"storage: the database driver for {shown} is not installed ({error.name}), allowed sqlite:///PATH or a URL whose driver is installed") from None
    except Exception as error:
        first = str(getattr(error, "orig", None) or error).strip().splitlines()[0][:200]
        raise InputError(f"storage: cannot connect to {shown} ({first}), allowed a reachable database") from None


def _local_nodes() -> list[dict[str, Any]]:
    """The one node ``ray.init`` would start here (num_cpus = os.cpu_count(); the GPUs torch sees)."""
    import torch

    return [{"Alive": True, "Resources": {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}}]


def check_resources(config: Any, nodes: list[dict[str, Any]]) -> None:
    """Refuse per-trial requests no node of the cluster can ever satisfy (Ray would wait forever).

    ``nodes`` is ``ray.nodes()``: dicts with ``Alive`` and ``Resources`` (``CPU``, ``GPU``).

        >>> from runners.config import SweepConfig
        >>> check_resources(SweepConfig(cpus_per_trial=2), [{"Alive": True, "Resources": {"CPU": 4.0}}])
    """
    alive = [node.get("Resources", {}) for node in nodes if node.get("Alive", True)]
    cpus = max((r.get("CPU", 0.0) for r in alive), default=0.0)
    gpus = max((r.get("GPU", 0.0) for r in alive), default=0.0)
    if config.cpus_per_trial > cpus:
        raise InputError(f"cpus_per_trial: {config.cpus_per_trial:g} is more than any node has, allowed a number in (0, {cpus:g}]")
    if config.gpus_per_trial > 0 and gpus == 0:
        raise InputError(f"gpus_per_trial: {config.gpus_per_trial:g} but the cluster has no GPU, allowed 0")
    if config.gpus_per_trial > gpus:
        raise InputError(f"gpus_per_trial: {config.gpus_per_trial:g} is more than any node has, allowed a number in [0, {gpus:g}]")


def check_sweep(config: Any) -> None:
    """Everything ``nas search`` can check before it creates its run directory, study or Ray session."""
    runs = Path(config.runs_dir)
    check_output_dir(runs, "runs_dir")
    check_output_dir(config.run_dir, "name")
    stored = config.run_dir / "config.json"
    if stored.exists():
        read_json_mapping(stored, "run directory")
    check_storage(config.storage_url, config.run_dir)
    if config.address and config.address != "auto":
        check_address(config.address)
    if config.ray_tmpdir:
        check_output_dir(config.ray_tmpdir, "ray_tmpdir")
    if not config.address:
        check_resources(config, _local_nodes())
    space = SearchSpace.from_config(config.space or {}, backbone=config.backbone)
    options = [space.stage_options(n) for n in range(1, len(space.stages) + 1)]
    device = "cuda" if config.gpus_per_trial > 0 else "cpu"
    train, timing = config.train, config.timing
    check_memory(activation_elements(space.backbone, train.image_size, options), train.batch_size, device,
                 f"train.image_size {train.image_size} with train.batch_size {train.batch_size}")
    timing_size = timing.image_size or space.backbone.train_image_size
    check_memory(activation_elements(space.backbone, timing_size, options), timing.batch_size, device,
                 f"timing.image_size {timing_size} with timing.batch_size {timing.batch_size}")


@contextlib.contextmanager
def undo_new_run(config: Any) -> Iterator[None]:
    """A sweep refused after it created a new run directory (a late check, e.g. cluster resources) leaves nothing."""
    created = None  # the topmost directory this sweep would create
    for path in (config.run_dir, *config.run_dir.parents):
        if os.path.lexists(path):
            break
        created = path
    try:
        yield
    except InputError:
        if created is not None and created.is_dir():
            shutil.rmtree(created, ignore_errors=True)
        raise


def check_reward(name: str, options: dict[str, Any]) -> Callable[[float, float, float], float]:
    """The reward ``name`` with ``options``, checked: the project's one place that turns a reward's name and options into
    a function. Options are checked when the reward is called too, so it is called once on neutral inputs, before any work.
    """
    try:
        function = get_reward(name, **options)
        function(0.5, 1.0, 1.0)
    except RewardError as error:
        raise InputError(str(error)) from None
    return function
