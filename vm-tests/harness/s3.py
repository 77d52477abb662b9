"""An S3-protocol server on the host for the machines' backup repository: moto (plain HTTP, on
the host's loopback) behind stunnel, which serves TLS on the LAN's host address with a leaf for
``NAME`` from a throwaway CA made here with openssl. pgBackRest checks the certificate against a
DNS name, so the machines get ``NAME`` in /etc/hosts (``hosts_line``)."""

import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from .certs import ca_and_leaf
from .machine import die_with_parent

NAME = "s3.pgaas-vm.test"
BUCKET = "pgaas-vm"
ACCESS_KEY = "pgaasvmkey"
SECRET_KEY = "pgaas-vm-secret-5c1e"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _moto_server():
    for p in (os.environ.get("MOTO_SERVER_BIN"), "/var/cache/pgaas-ci/moto/bin/moto_server",
              os.path.expanduser("~/.cache/pgaas/moto/bin/moto_server")):
        if p and os.path.isfile(p):
            return p
    raise RuntimeError("moto's S3 server is needed: scripts/test installs it "
                       "(python3 -m venv /var/cache/pgaas-ci/moto && "
                       "/var/cache/pgaas-ci/moto/bin/pip install 'moto[server]')")


class S3:
    def __init__(self, workdir, listen_ip):
        self.dir = Path(workdir) / "s3"
        self.dir.mkdir(parents=True)
        self.listen_ip = listen_ip
        self.port = 9443
        self.procs = []

    @property
    def ca_pem(self):
        return (self.dir / "ca.pem").read_text()

    @property
    def hosts_line(self):
        return f"{self.listen_ip} {NAME}\n"

    @property
    def credentials(self):
        return f"AWS_ACCESS_KEY_ID={ACCESS_KEY}\nAWS_SECRET_ACCESS_KEY={SECRET_KEY}\n"

    def settings_yaml(self, ca_file):
        """The `archive.s3` mapping for pgaas.yaml."""
        return (f"  s3: {{ endpoint: {NAME}, port: {self.port}, bucket: {BUCKET}, "
                f"region: us-east-1, ca_file: {ca_file} }}\n")

    def start(self):
        d = self.dir
        ca_and_leaf(d, "pgaas vm-tests S3 CA", NAME, f"DNS:{NAME}")
        http = _free_port()
        log = open(d / "s3.log", "w")
        self.procs.append(subprocess.Popen(
            [_moto_server(), "-H", "127.0.0.1", "-p", str(http)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            # Path-style requests to a dotted host name: without this moto reads "s3" as a bucket.
            env={**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "true",
                 "S3_IGNORE_SUBDOMAIN_BUCKETNAME": "true"},
            preexec_fn=die_with_parent))
        (d / "stunnel.conf").write_text(
            f"foreground = yes\npid =\n[s3]\naccept = {self.listen_ip}:{self.port}\n"
            f"connect = 127.0.0.1:{http}\ncert = {d / 'leaf.pem'}\nkey = {d / 'leaf.key'}\n")
        self.procs.append(subprocess.Popen(
            ["stunnel4", str(d / "stunnel.conf")],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent))
        deadline = time.monotonic() + 30
        while True:
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{http}/{BUCKET}", method="PUT")
                urllib.request.urlopen(req, timeout=5).read()
                with socket.create_connection((self.listen_ip, self.port), timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                    raise RuntimeError("the S3 server did not come up:\n" + self.log_text())
                time.sleep(0.2)
        return self

    def log_text(self):
        try:
            return (self.dir / "s3.log").read_text()[-3000:]
        except OSError:
            return ""

    def stop(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        return []
