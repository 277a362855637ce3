"""Azurite, the Azure Storage emulator (npm `azurite`, installed by `make azurite` into tools/azurite/), for tests.

Run the way a bearer token can reach it: HTTPS with a self-signed certificate made here (azure-storage-blob
sends tokens only over HTTPS, and Azurite checks them only with `--oauth basic`, which needs HTTPS),
`--oauth basic` (issuer, audience and lifetime checked; not the signature) and data in memory.
`--skipApiVersionCheck`: azure-storage-blob 12.31 speaks a newer API version than Azurite 3.37 knows.
Clients trust the certificate through REQUESTS_CA_BUNDLE, which requests (azure-core's transport) reads.
The account is Azurite's well-known development account; its key is used only to put the test's blobs in.
"""
from __future__ import annotations

import datetime
import ipaddress
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from common.processes import free_port, start, wait_healthy
from common.processes import stop_group as stop
from serving.helpers import REPO_ROOT

AZURITE_BLOB = REPO_ROOT / "tools" / "azurite" / "node_modules" / ".bin" / "azurite-blob"
ACCOUNT = "devstoreaccount1"
# Azurite's documented development-account key (public, in Azurite's README): not a secret.
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
HOST = "127.0.0.1"


@dataclass
class Azurite:
    process: subprocess.Popen
    port: int
    ca_file: Path
    log: Path

    @property
    def endpoint(self) -> str:
        return f"https://{HOST}:{self.port}/{ACCOUNT}"

    def folder_url(self, container: str, folder: str) -> str:
        """The https URL of a folder, as deploy passes it to the container."""
        return f"{self.endpoint}/{container}/{folder}"

    def admin_client(self):
        """A BlobServiceClient with the account key: for the test to put blobs in, never for the code under test."""
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(
            f"DefaultEndpointsProtocol=https;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};BlobEndpoint={self.endpoint};",
            connection_verify=str(self.ca_file))

    def upload_folder(self, folder: Path, container: str, prefix: str) -> str:
        """Every file under `folder` as blobs under `prefix`; returns the folder's URL."""
        client = self.admin_client().get_container_client(container)
        if not client.exists():
            client.create_container()
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            with open(path, "rb") as data:
                client.upload_blob(f"{prefix}/{path.relative_to(folder).as_posix()}", data, overwrite=True)
        return self.folder_url(container, prefix)

    def stop(self) -> None:
        stop(self.process)


def start_azurite(workdir: Path, timeout: float = 60.0) -> Azurite:
    """Azurite's blob service on a free port over HTTPS with OAuth, once it accepts connections."""
    if not AZURITE_BLOB.exists():
        raise RuntimeError(f"Azurite is not installed ({AZURITE_BLOB} is missing): run `make azurite` "
                           "(npm ci into tools/azurite/; `make test` does it)")
    cert, key = _self_signed(workdir)
    port, log = free_port(), workdir / "azurite.log"
    process, _ = start([str(AZURITE_BLOB), "--blobHost", HOST, "--blobPort", str(port), "--inMemoryPersistence",
                        "--oauth", "basic", "--cert", str(cert), "--key", str(key), "--skipApiVersionCheck",
                        "--disableTelemetry"], log, cwd=workdir)
    wait_healthy(process, f"{HOST}:{port}", log, timeout=timeout, what="Azurite", ready=_listening)
    return Azurite(process, port, cert, log)


def _listening(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
        return True
    except OSError:
        return False


def _self_signed(workdir: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that is its own CA, and its key (PEM files in `workdir`)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = workdir / "azurite-cert.pem", workdir / "azurite-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file
