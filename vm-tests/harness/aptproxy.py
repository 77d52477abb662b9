"""A forwarding HTTP proxy that only ever talks to the Debian mirror.

nspawn machines live in their own network namespace with no route out; their apt is pointed at this
proxy, which listens on the host side of the machine's veth. Every connection is relayed to
deb.debian.org:80, whatever the request says, so a guest cannot use it to reach anything else.
HTTP/1.1 origin servers must accept absolute-form request targets, so bytes are relayed untouched.
"""

import socket
import threading

UPSTREAM = ("deb.debian.org", 80)


class AptProxy:
    def __init__(self, listen_addr, port=3142):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((listen_addr, port))
        self.sock.listen(64)
        self.address = f"http://{listen_addr}:{port}"
        self.closed = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client):
        try:
            head = b""
            while b"\r\n" not in head:
                chunk = client.recv(65536)
                if not chunk:
                    return
                head += chunk
            if head.split(b" ", 1)[0] == b"CONNECT":
                client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                return
            upstream = socket.create_connection(UPSTREAM, timeout=60)
        except OSError:
            client.close()
            return
        upstream.sendall(head)
        t = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
        t.start()
        _pipe(client, upstream)
        t.join()

    def close(self):
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def _pipe(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
