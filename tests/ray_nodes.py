"""Ray nodes as separate processes, and the processes and sockets they leave, read from /proc (tests/test_team.py, tests/test_cluster.py).

Not a test module: the helpers the cluster tests share, and that ``LOCAL_RAY`` (tests/test_team.py) imports in its own interpreter.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

RAY = [str(Path(sys.executable).parent / "ray")]  # the `ray` command of this environment


# ---- processes and sockets, read from /proc ---------------------------------------------------
def descendants(roots: set[int]) -> set[int]:
    """``roots`` and every live process below them."""
    parent: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    found, grew = set(roots), True
    while grew:
        new = {pid for pid, ppid in parent.items() if ppid in found} - found
        found |= new
        grew = bool(new)
    return found


def _ip(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # /proc/net prints 32-bit words little-endian
    address = ipaddress.ip_address(raw)
    return str(getattr(address, "ipv4_mapped", None) or address)  # ::ffff:127.0.0.1 -> 127.0.0.1


def listening_addresses(pids: set[int]) -> set[str]:
    """The local addresses of the TCP sockets that ``pids`` listen on."""
    listening = {}
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                listening[fields[9]] = _ip(fields[1].split(":")[0])
    found = set()
    for pid in pids:
        try:
            links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:
            continue
        found |= {listening[link[8:-1]] for link in links if link.startswith("socket:[") and link[8:-1] in listening}
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- a private network: a bridge on this host and network namespaces on it ---------------------------
@contextlib.contextmanager
def private_network(count: int) -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """A bridge on this host and ``count`` network namespaces plugged into it, each with its own address (root only).

    Yields (this host's address on the bridge, [(namespace, its address), ...]). A process in a namespace
    reaches this host only at that address: not at 127.0.0.1, which is its own. Removed afterwards.
    """
    tag, routes = secrets.token_hex(3), subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    subnet = next(net for net in (f"10.{random.randint(64, 250)}.{random.randint(0, 255)}" for _ in range(100)) if f"{net}." not in routes)
    bridge, names = f"nasbr{tag}", [f"nas-{tag}-{i}" for i in range(count)]

    def ip(*args: str, netns: str | None = None) -> None:
        subprocess.run([*(["ip", "netns", "exec", netns] if netns else []), "ip", *args], check=True, capture_output=True, timeout=30)

    try:
        ip("link", "add", bridge, "type", "bridge")
        ip("addr", "add", f"{subnet}.1/24", "dev", bridge)
        ip("link", "set", bridge, "up")
        for number, name in enumerate(names, start=2):
            ip("netns", "add", name)
            ip("link", "add", f"nasv{tag}{number}", "type", "veth", "peer", "name", "eth0", "netns", name)
            ip("link", "set", f"nasv{tag}{number}", "master", bridge, "up")
            ip("addr", "add", f"{subnet}.{number}/24", "dev", "eth0", netns=name)
            ip("link", "set", "eth0", "up", netns=name)
            ip("link", "set", "lo", "up", netns=name)
        yield f"{subnet}.1", [(name, f"{subnet}.{number}") for number, name in enumerate(names, start=2)]
    finally:
        for name in names:  # its end of each veth pair goes with it
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True, timeout=30)


# ---- Ray nodes started by a test ---------------------------------------------------------------
def stop_nodes(procs: list[subprocess.Popen], known: set[int]) -> set[int]:
    """SIGTERM the `ray start --block` processes (they stop their nodes), then SIGKILL whatever of ``known`` is left."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    deadline, left = time.monotonic() + 30, set(known)
    while left and time.monotonic() < deadline:
        left = {pid for pid in left if Path(f"/proc/{pid}").exists() and "(Z)" not in _state(pid)}
        time.sleep(0.5)
    for pid in left:  # never more than what this test started
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return left


def _state(pid: int) -> str:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        return f"({text.rsplit(')', 1)[1].split()[0]})"
    except OSError:
        return "(gone)"


def alive_nodes(address: str, env: dict[str, str], count: int, timeout: float = 120) -> list[str]:
    """Node ids from `ray status` (which asks the GCS without joining as a driver), once ``count`` are active."""
    deadline, nodes = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        status = subprocess.run([*RAY, "status", "--address", address], capture_output=True, text=True, timeout=60, env=env)
        active = status.stdout.split("Active:", 1)[-1].split("Pending:", 1)[0]
        nodes = sorted(word.removeprefix("node_") for word in active.split() if word.startswith("node_"))
        if len(nodes) >= count:
            break
        time.sleep(1)
    return nodes
