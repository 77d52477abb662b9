"""A private LAN for several nspawn machines: a bridge inside a network namespace of its own.

Each machine joins it with a second veth (``eth1`` in the machine, 10.88.N.<i>/24), and the host
with one more (10.88.N.254), so the machines reach each other and the host reaches them, and the
LAN reaches nothing else (no route out, no forwarding). Deleting the namespace removes the bridge
and every veth end in it; ``close`` does that, whatever was set up.
"""

import os

from .nspawn import NETNS_PREFIX, sh


def free_lan():
    used = sh("ip", "-4", "-o", "addr", "show").stdout
    for n in range(1, 250):
        if f"10.88.{n}." not in used:
            return n
    raise RuntimeError("no free 10.88.N.0/24 subnet")


class Lan:
    def __init__(self):
        self.n = free_lan()
        self.netns = f"{NETNS_PREFIX}{os.getpid()}-lan{self.n}"
        self.uplink = f"pv{os.getpid():x}n0l{self.n}"
        self.host_address = f"10.88.{self.n}.254"
        sh("ip", "netns", "add", self.netns)
        try:
            sh("ip", "-n", self.netns, "link", "add", "br0", "type", "bridge")
            sh("ip", "-n", self.netns, "link", "set", "br0", "up")
            sh("ip", "link", "add", self.uplink, "type", "veth", "peer", "name", "uplink",
               "netns", self.netns)
            sh("ip", "-n", self.netns, "link", "set", "uplink", "master", "br0", "up")
            sh("ip", "addr", "add", f"{self.host_address}/24", "dev", self.uplink)
            sh("ip", "link", "set", self.uplink, "up")
        except Exception:
            self.close()
            raise

    def address(self, i):
        return f"10.88.{self.n}.{i}"

    def join(self, machine_netns, i, serial):
        """Plug a machine's namespace into the bridge as eth1 with address .i."""
        port = f"pv{os.getpid():x}n{serial}l"
        sh("ip", "link", "add", port, "type", "veth", "peer", "name", "eth1", "netns", machine_netns)
        sh("ip", "link", "set", port, "netns", self.netns)
        sh("ip", "-n", self.netns, "link", "set", port, "master", "br0", "up")
        sh("ip", "-n", machine_netns, "addr", "add", f"{self.address(i)}/24", "dev", "eth1")
        sh("ip", "-n", machine_netns, "link", "set", "eth1", "up")
        return self.address(i)

    def close(self):
        sh("ip", "link", "del", self.uplink, check=False)
        sh("ip", "netns", "del", self.netns, check=False)
        return []
