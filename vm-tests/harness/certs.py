"""A throwaway CA and one TLS server leaf, made with openssl, for the servers the host runs for
the machines (Pebble's HTTPS, the S3 store): ``ca.pem``/``ca.key`` and ``leaf.pem``/``leaf.key``
in a directory."""

import subprocess


def _openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def ca_and_leaf(d, ca_name, leaf_name, subject_alt_names):
    """Make them in ``d`` (a Path); ``subject_alt_names`` such as ``IP:10.0.0.1,DNS:localhost``."""
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-days", "2", "-subj", f"/CN={ca_name}",
             "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"))
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-subj", f"/CN={leaf_name}", "-keyout", str(d / "leaf.key"), "-out", str(d / "leaf.csr"))
    (d / "leaf.ext").write_text(f"subjectAltName={subject_alt_names}\n"
                                "extendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", str(d / "leaf.csr"), "-CA", str(d / "ca.pem"),
             "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "2",
             "-extfile", str(d / "leaf.ext"), "-out", str(d / "leaf.pem"))
