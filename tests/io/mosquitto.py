"""Test helper: a real mosquitto broker (Debian's ``mosquitto``) on 127.0.0.1 and a free port.

Usage from any test::

    from .mosquitto import start_broker

    broker = start_broker(tmp_path)                          # anonymous
    broker = start_broker(tmp_path, username="u", password="p")   # password file
    broker = start_broker(tmp_path, tls=True)                # throwaway CA + server certificate
    try:
        ... broker.port, broker.client_args() for mosquitto_sub/pub ...
        broker.stop(); broker.start()                        # restart on the same port
    finally:
        broker.stop()

The configuration file, password file, certificates, persistence database and broker log are
written in ``tmp_path / "mosquitto"``. :meth:`Broker.start` returns once the broker answers an
MQTT CONNECT (with the credentials and TLS settings it was made with).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class TlsFiles:
    """A throwaway CA and a server certificate for ``localhost`` / ``127.0.0.1`` (PEM files)."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def make_tls_files(directory: Path, use_openssl: bool | None = None) -> TlsFiles:
    """Generate a CA and a server certificate signed by it, valid for two days.

    Parameters
    ----------
    directory : pathlib.Path
        Where to write ``ca.crt``, ``server.crt`` and ``server.key``.
    use_openssl : bool or None
        Force the ``openssl`` command line (True) or the ``cryptography`` package (False);
        None: ``cryptography`` when installed, else ``openssl``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    if use_openssl is None:
        try:
            import cryptography  # noqa: F401
        except ImportError:
            use_openssl = True
        else:
            use_openssl = False
    if use_openssl:
        return _tls_openssl(directory)
    return _tls_cryptography(directory)


def _tls_cryptography(d: Path) -> TlsFiles:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "openbess test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(d / "ca.crt", d / "server.crt", d / "server.key")
    files.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.server_key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    files.server_key.chmod(0o600)
    return files


def _tls_openssl(d: Path) -> TlsFiles:
    files = TlsFiles(d / "ca.crt", d / "server.crt", d / "server.key")
    ca_key, csr, ext = d / "ca.key", d / "server.csr", d / "server.ext"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run = ["openssl", "req", *ec]
    subprocess.run(
        [
            *run,
            "-x509",
            "-keyout",
            ca_key,
            "-out",
            files.ca_cert,
            "-days",
            "2",
            "-subj",
            "/CN=openbess test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [*run, "-keyout", files.server_key, "-out", csr, "-subj", "/CN=localhost"],
        check=True,
        capture_output=True,
    )
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
        "extendedKeyUsage=serverAuth\n"
    )
    subprocess.run(
        [
            "openssl",
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            files.ca_cert,
            "-CAkey",
            ca_key,
            "-CAcreateserial",
            "-out",
            files.server_cert,
            "-days",
            "2",
            "-extfile",
            ext,
        ],
        check=True,
        capture_output=True,
    )
    files.server_key.chmod(0o600)
    return files


def _connect_packet(client_id: str, username: str | None, password: str | None) -> bytes:
    """An MQTT 3.1.1 CONNECT packet (clean session, keepalive 10 s)."""

    def s(text: str) -> bytes:
        raw = text.encode()
        return len(raw).to_bytes(2, "big") + raw

    flags = 0x02 | (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    body = s("MQTT") + bytes([4, flags]) + (10).to_bytes(2, "big") + s(client_id)
    if username is not None:
        body += s(username)
    if password is not None:
        body += s(password)
    n, length = len(body), b""
    while True:
        n, digit = divmod(n, 128)
        length += bytes([digit | (0x80 if n else 0)])
        if not n:
            break
    return b"\x10" + length + body


@dataclass
class Broker:
    """A mosquitto process listening on ``host:port`` (see :func:`start_broker`)."""

    workdir: Path
    port: int
    username: str | None = None
    password: str | None = None
    tls: TlsFiles | None = None
    persistence: bool = False
    host: str = "127.0.0.1"
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def conf_path(self) -> Path:
        return self.workdir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    def write_config(self) -> None:
        """Write the configuration (and the password file) into :attr:`workdir`."""
        lines = [
            f"listener {self.port} {self.host}",
            "log_dest stdout",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "set_tcp_nodelay true",
            "max_queued_messages 200000",
            "max_inflight_messages 100",
            f"persistence {'true' if self.persistence else 'false'}",
        ]
        if self.persistence:
            lines.append(f"persistence_location {self.workdir}/")
            lines.append("autosave_interval 3600")
        if os.geteuid() == 0:  # stay root: the files in tmp_path are root's (0700)
            lines.append("user root")
        if self.username is not None:
            pw = self.workdir / "passwords"
            subprocess.run(
                ["mosquitto_passwd", "-c", "-b", pw, self.username, self.password or ""],
                check=True,
                capture_output=True,
            )
            lines += ["allow_anonymous false", f"password_file {pw}"]
        else:
            lines.append("allow_anonymous true")
        if self.tls is not None:
            lines += [
                f"cafile {self.tls.ca_cert}",
                f"certfile {self.tls.server_cert}",
                f"keyfile {self.tls.server_key}",
            ]
        self.conf_path.write_text("\n".join(lines) + "\n")

    def start(self, timeout_s: float = 10.0) -> None:
        """Start mosquitto (again, on the same port) and wait until it accepts an MQTT CONNECT.

        Raises
        ------
        RuntimeError
            If the process exits or does not answer within ``timeout_s`` (with its log).
        """
        if self.process is not None and self.process.poll() is None:
            return
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf_path)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"mosquitto exited with {self.process.returncode}:\n{self.log_path.read_text()}"
                )
            if self._answers():
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"mosquitto did not answer on port {self.port}")

    def _answers(self) -> bool:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=1.0)
        except OSError:
            return False
        try:
            if self.tls is not None:
                ctx = ssl.create_default_context(cafile=str(self.tls.ca_cert))
                sock = ctx.wrap_socket(sock, server_hostname=self.host)
            sock.sendall(_connect_packet("probe", self.username, self.password))
            ack = sock.recv(4)
            if len(ack) == 4 and ack[0] == 0x20:
                sock.sendall(b"\xe0\x00")  # DISCONNECT
                return True
            return False
        except OSError:
            return False
        finally:
            sock.close()

    def stop(self) -> None:
        """Stop mosquitto (SIGTERM, then SIGKILL) and wait for it; idempotent."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def client_args(self) -> list[str]:
        """Connection options for ``mosquitto_sub`` / ``mosquitto_pub`` / ``mosquitto_rr``."""
        args = ["-h", self.host, "-p", str(self.port)]
        if self.username is not None:
            args += ["-u", self.username, "-P", self.password or ""]
        if self.tls is not None:
            args += ["--cafile", str(self.tls.ca_cert)]
        return args

    def log_text(self) -> str:
        """The broker's log so far."""
        return self.log_path.read_text() if self.log_path.exists() else ""


def start_broker(
    tmp_path: Path,
    username: str | None = None,
    password: str | None = None,
    tls: bool = False,
    persistence: bool = False,
) -> Broker:
    """Write a configuration in ``tmp_path / "mosquitto"`` and start the broker on a free port.

    Parameters
    ----------
    tmp_path : pathlib.Path
        Test directory.
    username, password : str or None
        Require this user (password file made with ``mosquitto_passwd -b``); None: anonymous.
    tls : bool
        TLS listener with a throwaway CA (``broker.tls.ca_cert`` for clients).
    persistence : bool
        Keep retained messages and persistent sessions across :meth:`Broker.stop` /
        :meth:`Broker.start`.

    Returns
    -------
    Broker
        The running broker; the caller stops it (``try/finally`` or a fixture).
    """
    workdir = tmp_path / "mosquitto"
    workdir.mkdir(parents=True, exist_ok=True)
    files = make_tls_files(workdir / "tls") if tls else None
    for attempt in range(3):  # the free port may be taken between the probe and the bind
        broker = Broker(workdir, free_port(), username, password, files, persistence)
        broker.write_config()
        try:
            broker.start()
        except RuntimeError:
            if attempt == 2:
                raise
            continue
        return broker
    raise RuntimeError("unreachable")  # pragma: no cover
