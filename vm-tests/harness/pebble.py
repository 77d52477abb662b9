"""Pebble (a test ACME CA, Debian's package) on the host, reachable from one machine.

Pebble listens on the host side of the machine's link; its validator resolves every name through
pebble-challtestsrv, whose answer is the machine's address, so HTTP-01 challenges are fetched from
the machine across the same link. Pebble's own HTTPS needs a certificate: a throwaway CA and a leaf
for the host-side address, made here with openssl (webpki refuses a self-signed leaf as a root).
Pebble makes a new issuing root at every start; ``issuing_root`` fetches it.
"""

import json
import socket
import subprocess
import time
import urllib.request
import ssl
from pathlib import Path

from .certs import ca_and_leaf
from .machine import die_with_parent

HTTP_PORT = 5002  # where Pebble's validator dials HTTP-01 challenges on the machine


class Pebble:
    def __init__(self, workdir, listen_ip, machine_ip):
        self.dir = Path(workdir) / "pebble"
        self.dir.mkdir(parents=True)
        self.listen_ip, self.machine_ip = listen_ip, machine_ip
        self.directory = f"https://{listen_ip}:14000/dir"
        self.procs = []

    def start(self):
        d = self.dir
        ca_and_leaf(d, "pgaas vm-tests pebble https CA", "pebble",
                    f"IP:{self.listen_ip},DNS:localhost")
        dns_port = _free_udp_port()
        config = {"pebble": {
            "listenAddress": f"{self.listen_ip}:14000",
            "managementListenAddress": f"{self.listen_ip}:15000",
            "certificate": str(d / "leaf.pem"), "privateKey": str(d / "leaf.key"),
            "httpPort": HTTP_PORT, "tlsPort": 5001, "ocspResponderURL": "",
            "externalAccountBindingRequired": False}}
        (d / "pebble.json").write_text(json.dumps(config))
        log = open(d / "pebble.log", "w")
        self.procs.append(subprocess.Popen(
            ["pebble-challtestsrv", "-dns01", f"127.0.0.1:{dns_port}", "-http01", "",
             "-https01", "", "-tlsalpn01", "", "-management", f"127.0.0.1:{_free_tcp_port()}",
             "-defaultIPv4", self.machine_ip, "-defaultIPv6", ""],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent))
        self.procs.append(subprocess.Popen(
            ["pebble", "-config", str(d / "pebble.json"), "-dnsserver", f"127.0.0.1:{dns_port}",
             "-strict=false"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PATH": "/usr/bin:/bin"},
            preexec_fn=die_with_parent))
        deadline = time.monotonic() + 30
        while True:
            try:
                self._get(self.directory)
                break
            except OSError:
                if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                    raise RuntimeError("Pebble did not come up:\n" + self.log_text())
                time.sleep(0.2)
        return self

    @property
    def https_ca(self):
        """The CA of Pebble's own HTTPS listener (pgaas cert issue --ca-file)."""
        return self.dir / "ca.pem"

    def issuing_root(self):
        """Pebble's current issuing root (changes at each start)."""
        pem = self._get(f"https://{self.listen_ip}:15000/roots/0")
        (self.dir / "root.pem").write_bytes(pem)
        return self.dir / "root.pem"

    def _get(self, url):
        ctx = ssl.create_default_context(cafile=str(self.https_ca))
        with urllib.request.urlopen(url, context=ctx, timeout=5) as r:
            return r.read()

    def log_text(self):
        return (self.dir / "pebble.log").read_text(errors="replace")

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        return []


def _free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_tcp_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
