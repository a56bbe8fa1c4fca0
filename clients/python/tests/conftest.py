"""A live kexin node with its HTTP API, for the client's tests: a generated
space (three hospitals, 600 patients each) and `kexin node --http` on a
free loopback port. The `kexin` binary is `$KEXIN_BIN`, else the release
build under `$CARGO_TARGET_DIR` (default ~/.cache/kexin-target)."""

import json
import os
import socket
import subprocess
import tomllib
from pathlib import Path

import pytest


def kexin_bin() -> str:
    if os.environ.get("KEXIN_BIN"):
        return os.environ["KEXIN_BIN"]
    target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/kexin-target"))
    path = Path(target) / "release" / "kexin"
    if not path.exists():
        raise RuntimeError(f"no kexin binary at {path}: run `cargo build --release` first")
    return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Space:
    def __init__(self, directory: Path):
        self.dir = directory
        self.bin = kexin_bin()

    def kexin(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([self.bin, *args], capture_output=True, text=True, timeout=300)

    def key(self, member: str) -> Path:
        return self.dir / "keys" / f"{member}.key"


def make_space(d: Path) -> Space:
    """A generated space in ``d`` (three hospitals, 600 patients each, seed
    11) with answers unpadded and free loopback ports for its nodes."""
    sp = Space(d)
    out = sp.kexin("gen", "--out", str(d), "--hospitals", "3", "--patients", "600", "--seed", "11")
    assert out.returncode == 0, out.stderr
    policy = d / "space.toml"
    policy.write_text(policy.read_text().replace("response_quantum_ms = 500", "response_quantum_ms = 0"))
    renumber_ports(sp)
    return sp


def renumber_ports(sp: Space) -> None:
    """Give the space's nodes new free loopback ports (a copied space)."""
    fed = "round_timeout_seconds = 10\n"
    for h in (1, 2, 3):
        fed += f'[node.h{h}]\naddress = "127.0.0.1:{free_port()}"\nmember = "node-h{h}"\n'
    (sp.dir / "federation.toml").write_text(fed)


def start_node(space: Space):
    """Start node h1 with its HTTP API and Flight SQL on free ports; the
    process and ``{url, flight, node_key, space, keys}``."""
    proc = subprocess.Popen(
        [space.bin, "node", "--space", str(space.dir), "--node", "h1", "--http", "127.0.0.1:0",
         "--flight", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    url = flight = None
    for line in proc.stdout:
        if " api on " in line:
            url = line.split(" api on ", 1)[1].strip()
        if " flight on " in line:
            flight = line.split(" flight on ", 1)[1].strip()
        if " ready on " in line:
            break
    assert url and flight, "the node printed no API or Flight address"
    members = space.kexin("id", "list", "--space", str(space.dir), "--format", "json")
    assert members.returncode == 0, members.stderr
    keys = {m["member"]: m["public_key"] for m in map(json.loads, members.stdout.splitlines())}
    name = tomllib.loads((space.dir / "space.toml").read_text())["space"]["name"]
    return proc, {"url": url, "flight": flight, "node_key": keys["node-h1"], "space": name, "keys": keys}


def stop_node(proc) -> None:
    proc.terminate()
    proc.wait(timeout=90)


@pytest.fixture(scope="session")
def space(tmp_path_factory) -> Space:
    return make_space(tmp_path_factory.mktemp("space"))


@pytest.fixture(scope="session")
def node(space):
    """Node h1 with its HTTP API and Flight SQL: their URLs, the node's key
    (hex), the space's name and every member's key."""
    proc, info = start_node(space)
    yield info
    stop_node(proc)
