"""A test bed of hosts that share nothing but a network, on one Linux machine (root needed).

Each host is a network namespace with its own address on a veth pair, and a mount and PID
namespace held open by one `sleep` (the host's init): private tmpfs mounts over `/tmp`,
`/dev/shm` and `~/.cache` hide the other host's results folder, token cache, Ray temp folder and
corpus files. What both see is what two machines built from one image see: the system, the
repository and its virtual environment (the project installed on both), and the test's control
folder (`Bed.control`, under /var/tmp: hold and release files only, never data).

Killing a host's init kills every process of that host at once (the kernel ends a PID
namespace with its init), which is what a machine that loses power does to a cluster.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PRIVATE = ("/tmp", "/dev/shm", "/root/.cache", "/root/.ray")


def unavailable() -> str | None:
    """Why the bed cannot run here (None when it can)."""
    if sys.platform != "linux":
        return "the hosts test bed needs Linux namespaces"
    if os.geteuid() != 0:
        return "the hosts test bed needs root (network, mount and PID namespaces)"
    for tool in ("ip", "unshare", "nsenter"):
        if shutil.which(tool) is None:
            return f"the hosts test bed needs `{tool}` (iproute2 / util-linux)"
    probe = f"ta-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"network namespaces are not available: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _installed() -> list[str]:
    """The project and its environment (what both machines have installed), where they lie
    under a folder the hosts make private (a checkout in /tmp): kept visible on each host."""
    paths = {str(Path(__file__).resolve().parent.parent), sys.prefix}
    return sorted(p for p in paths if any(p == d or p.startswith(d + "/") for d in PRIVATE))


def _mount_script() -> str:
    """Private tmpfs over PRIVATE; the installed paths under them moved back into place."""
    keep = _installed()
    steps = [f"k{i}=$(mktemp -d -p /var/tmp) && mount --bind {p} $k{i}"
             for i, p in enumerate(keep)]
    steps += [f"mkdir -p {p} && mount -t tmpfs -o mode=1777 tmpfs {p}" for p in PRIVATE]
    steps += [f"mkdir -p {p} && mount --move $k{i} {p} && rmdir $k{i}"
              for i, p in enumerate(keep)]
    return " && ".join(steps)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class RoutedNamespace:
    """A network namespace shaped like a real machine for the socket test: a non-loopback
    address and a default route (a veth pair with both ends inside, the route through the other
    end). Without a default route Ray falls back to loopback on its own, so a check there would
    prove nothing. Nothing is sent anywhere: the route leads to the namespace itself."""

    def __init__(self):
        tag = f"tl{os.getpid() % 100000}{random.randint(0, 99)}"
        self.netns, veth = tag, (f"{tag}x", f"{tag}y")
        subnet = f"10.{random.randint(200, 250)}.{random.randint(0, 255)}"
        self.ip = f"{subnet}.1"
        _ip("netns", "add", tag)
        _ip("link", "add", veth[0], "type", "veth", "peer", "name", veth[1])
        for i, dev in enumerate(veth):
            _ip("link", "set", dev, "netns", tag)
            _ip("-n", tag, "addr", "add", f"{subnet}.{i + 1}/24", "dev", dev)
            _ip("-n", tag, "link", "set", dev, "up")
        _ip("-n", tag, "link", "set", "lo", "up")
        _ip("-n", tag, "route", "add", "default", "via", f"{subnet}.2", "dev", veth[0])

    def argv(self, cmd: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *cmd]

    def listening(self) -> list[tuple[str, str, str]]:
        """(protocol, local address, process) of every listening TCP and bound UDP socket."""
        out = subprocess.run(self.argv(["ss", "-ltunpH"]), capture_output=True, text=True,
                             check=True).stdout
        rows = []
        for line in out.splitlines():
            cols = line.split()
            if len(cols) >= 5:
                rows.append((cols[0], cols[4].rsplit(":", 1)[0], " ".join(cols[6:])))
        return rows

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)


class Host:
    """One simulated machine: run commands in it, or kill everything it runs."""

    def __init__(self, name: str, netns: str, ip: str):
        self.name, self.netns, self.ip = name, netns, ip
        self._unshare = subprocess.Popen(
            ["ip", "netns", "exec", netns, "unshare", "--mount", "--propagation", "private",
             "--pid", "--fork", "--mount-proc", "sh", "-c",
             f"{_mount_script()} && exec sleep infinity"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.init = self._wait_for_init()

    def _wait_for_init(self) -> int:
        deadline = time.time() + 20
        while time.time() < deadline:
            kids = subprocess.run(["pgrep", "-P", str(self._unshare.pid)], capture_output=True,
                                  text=True).stdout.split()
            if kids:
                pid = int(kids[0])
                if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sleep"):
                    return pid
            if self._unshare.poll() is not None:
                raise RuntimeError(f"host {self.name}: {self._unshare.stderr.read().decode()}")
            time.sleep(0.05)
        raise RuntimeError(f"host {self.name} did not start")

    def argv(self, cmd: list[str]) -> list[str]:
        return ["nsenter", "-t", str(self.init), "-m", "-n", "-p", "--", *cmd]

    def popen(self, cmd: list[str], env: dict[str, str], **kw) -> subprocess.Popen:
        return subprocess.Popen(self.argv(cmd), env=env, start_new_session=True, **kw)

    def run(self, cmd: list[str], env: dict[str, str], timeout: float = 600,
            input: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(cmd), env=env, capture_output=True, text=True,
                              timeout=timeout, input=input)

    def write(self, path: str, text: str, env: dict[str, str]) -> None:
        """A file that exists on this host only."""
        r = self.run(["sh", "-c", f"mkdir -p $(dirname {path}) && cat > {path}"], env,
                     input=text)
        assert r.returncode == 0, r.stderr

    def kill_all(self) -> None:
        """Every process of this host, at once."""
        if self._unshare.poll() is None:
            os.kill(self.init, signal.SIGKILL)
            self._unshare.wait(timeout=30)

    @property
    def alive(self) -> bool:
        return self._unshare.poll() is None


class Bed:
    """Hosts A and B on one subnet (A: .1, B: .2)."""

    def __init__(self):
        tag = f"ta{os.getpid() % 100000}"
        self.subnet = f"10.{random.randint(200, 250)}.{random.randint(0, 255)}"
        self.netns = [f"{tag}-A", f"{tag}-B"]
        self.control = Path(tempfile.mkdtemp(prefix="ta-bed-", dir="/var/tmp"))
        self.hosts: list[Host] = []
        veth = [f"{tag}a", f"{tag}b"]
        for ns in self.netns:
            _ip("netns", "add", ns)
        _ip("link", "add", veth[0], "type", "veth", "peer", "name", veth[1])
        for i, (ns, dev) in enumerate(zip(self.netns, veth)):
            _ip("link", "set", dev, "netns", ns)
            _ip("-n", ns, "addr", "add", f"{self.subnet}.{i + 1}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        self.a = Host("A", self.netns[0], f"{self.subnet}.1")
        self.b = Host("B", self.netns[1], f"{self.subnet}.2")
        self.hosts = [self.a, self.b]

    def restart_b(self) -> Host:
        """Host B again after `kill_all` (power back on: a fresh process tree, same address)."""
        self.b = self.hosts[1] = Host("B", self.netns[1], f"{self.subnet}.2")
        return self.b

    def close(self) -> None:
        for h in self.hosts:
            h.kill_all()
        for ns in self.netns:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(self.control, ignore_errors=True)


def host_env(**extra: str) -> dict[str, str]:
    """A clean environment, as on a fresh machine with the project installed: the virtual
    environment first on PATH, HOME's cache private (no token cache until one is built)."""
    venv_bin = str(Path(sys.executable).parent)
    env = {"PATH": f"{venv_bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "HOME": "/root", "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
           "RAY_USAGE_STATS_ENABLED": "0"}
    return env | extra
