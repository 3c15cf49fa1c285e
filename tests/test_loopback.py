"""A local sweep listens on loopback only, on a machine that has a network: inside a network
namespace with a non-loopback address and a default route (`hosts.RoutedNamespace`), the grid
command runs as a user runs it, its trials hold mid-way (a state, not a sleep), and every
listening TCP socket and bound UDP socket in the namespace (Ray's GCS, raylet, object manager,
driver, workers, agents and monitors) is on 127.0.0.1 / ::1.

Root and `ip` are needed (CI runs it with the hosts bed: `-m hosts`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from hosts import RoutedNamespace, unavailable

pytestmark = [pytest.mark.hosts, pytest.mark.slow]
WHY = unavailable()
if WHY:
    pytestmark.append(pytest.mark.skip(reason=WHY))


def _loopback(addr: str) -> bool:
    from tune_ablations.sweeps.cluster import is_loopback

    return is_loopback(addr)


@pytest.fixture
def netns():
    ns = RoutedNamespace()
    try:
        yield ns
    finally:
        ns.close()


def test_a_local_sweep_listens_on_loopback_only(netns, corpus_dir, tmp_path):
    # The control: in this namespace Ray's own choice of node address is the veth's address.
    probe = subprocess.run(netns.argv([sys.executable, "-c", (
        "from ray._private.services import get_node_ip_address as g; print(g())")]),
        capture_output=True, text=True, timeout=120)
    assert probe.stdout.strip() == netns.ip, probe.stderr[-2000:]
    hold = tmp_path / "hold"
    hold.mkdir()
    env = {**os.environ, "TUNE_ABLATIONS_TEST_HOLD": f"20:{hold}",
           "TUNE_ABLATIONS_CACHE": str(tmp_path / "cache")}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "tune_ablations.grid", "--preset", "tiny", "--data",
           str(corpus_dir), "--set", "vocab_size=300", "text_samples=0", "max_steps=40",
           "eval_every=20", "--ablations", "baseline", "high_lr", "--seeds", "1",
           "--storage", str(tmp_path), "--name", "lb"]
    proc = subprocess.Popen(netns.argv(cmd), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 300
        while len(list(hold.glob("held-*"))) < 2:  # both trials hold mid-way: Ray at full size
            assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.1)
        sockets = netns.listening()
    finally:
        (hold / "release").touch()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert len(sockets) >= 8, sockets  # GCS, raylet, workers, agents: Ray was running
    assert any("gcs_server" in s[2] for s in sockets) and any("raylet" in s[2] for s in sockets)
    exposed = [s for s in sockets if not _loopback(s[1])]
    assert not exposed, exposed
    for run in (tmp_path / "lb").glob("*/run.json"):
        assert json.loads(run.read_text())["node_ip"] == "127.0.0.1"
