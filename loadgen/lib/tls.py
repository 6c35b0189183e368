"""TLS for the generator's connections: how the server is verified and the client presents itself.

The materials (``--cacert``, ``--cert``/``--key``) are read and parsed once,
before the run, into a :class:`TlsClient`; each step asks it for one
connection creator, whose OpenSSL context every connection of the step
shares.  Verification is Twisted's (``optionsForClientTLS``: the chain
against the trust roots, then the name with service_identity); with
``insecure`` nothing is verified, but the server name is still sent (SNI),
so a server that picks its certificate by name answers as it would.  Every
handshake is a full one: sessions are not resumed, since the cost of a
handshake is what a ``Connection: close`` run over TLS measures.  ``groups``
(``--tls-groups``) sets the key exchange groups offered, which decide both
sides' cost of a handshake: OpenSSL 3.5 and later offer a post-quantum
X25519MLKEM768 key share beside X25519's by default (a 1.2 KB ClientHello and
an ML-KEM key made per connection, used or not), where OpenSSL 3.0, and most
clients before 2025, offer X25519 alone.

A failed handshake or verification reaches the engine as one of
:data:`TLS_ERRORS`, counted as errors of kind ``tls``.

:func:`write_self_signed` makes a CA and a server certificate signed by it,
for ``loadgen compare --tls`` and the tests.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cryptography
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from OpenSSL import SSL
from service_identity.exceptions import VerificationError
from twisted.internet import ssl
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from zope.interface import implementer

from dataserv._compat import set_tls_groups, tls_groups_supported
from loadgen.lib.inputs import InputError, read_bytes

# What a failed handshake or verification is: OpenSSL's errors (no shared
# protocol, an untrusted chain, an alert from the server such as "certificate
# required") and service_identity's name mismatch.
TLS_ERRORS: tuple[type[BaseException], ...] = (SSL.Error, VerificationError)


@implementer(IOpenSSLClientConnectionCreator)
class _Unverified:
    """A client connection creator that verifies nothing but still sends the server name (SNI)."""

    def __init__(self, server_name: str, client: ssl.PrivateCertificate | None) -> None:
        extra: dict[str, Any] = {}
        if client is not None:
            extra = {"privateKey": client.privateKey.original, "certificate": client.original}
        self._context = ssl.CertificateOptions(verify=False, **extra).getContext()
        self._sni = None if not server_name or isIPAddress(server_name) or isIPv6Address(server_name) \
            else server_name.encode("idna")

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        if self._sni is not None:
            connection.set_tlsext_host_name(self._sni)
        return connection


@implementer(IOpenSSLClientConnectionCreator)
class _WithGroups:
    """Another connection creator's connections, offering ``groups`` (``--tls-groups``) as key exchange groups."""

    def __init__(self, creator: Any, groups: bytes) -> None:
        self._creator = creator
        self._groups = groups

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = self._creator.clientConnectionForTLS(tlsProtocol)
        set_tls_groups(connection, self._groups)  # checked by load_tls: OpenSSL takes the list
        return connection


@dataclass(frozen=True)
class TlsClient:
    """A run's TLS settings, loaded: trust roots (None: the platform's), a client certificate, or no verification."""

    trust: ssl.Certificate | None = None
    client: ssl.PrivateCertificate | None = None
    insecure: bool = False
    groups: bytes | None = None  # the key exchange groups offered (None: OpenSSL's default)

    def creator(self, server_name: str) -> Any:
        """An ``IOpenSSLClientConnectionCreator`` for connections to ``server_name`` (the URL's host)."""
        creator: Any
        if self.insecure:
            creator = _Unverified(server_name, self.client)
        else:
            creator = ssl.optionsForClientTLS(server_name, trustRoot=self.trust if self.trust is not None
                                              else ssl.platformTrust(), clientCertificate=self.client)
        return creator if self.groups is None else _WithGroups(creator, self.groups)


def load_tls(*, cacert: str | None = None, cert: str | None = None, key: str | None = None,
             insecure: bool = False, groups: str | None = None) -> TlsClient:
    """Read and check the TLS materials; a missing or unparseable file raises :class:`InputError` naming it.

    ``cacert``: PEM certificate(s) of the CA to trust instead of the
    platform's (the first one is used, as Twisted's ``Certificate`` holds
    one).  ``cert``: the client's PEM certificate, with its key in ``key``
    or, without ``key``, in the same file.
    """
    if insecure and cacert is not None:
        raise InputError("cacert", "has no use when nothing is verified (insecure)")
    if key is not None and cert is None:
        raise InputError("key", "is given without a client certificate (cert)")
    group_list = None
    if groups is not None:
        if not tls_groups_supported():
            raise InputError("tls-groups", f"cannot be set with this cryptography ({cryptography.__version__}): "
                                           "its OpenSSL binding has no SSL_set1_groups_list; upgrade cryptography")
        group_list = groups.encode("ascii", "replace")
        probe = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
        if not groups.strip() or not set_tls_groups(probe, group_list):
            raise InputError("tls-groups", f"{groups!r} is not a list of key exchange groups OpenSSL knows "
                                           "(e.g. X25519:P-256, X25519MLKEM768:X25519)")
    trust = None
    if cacert is not None:
        data = read_bytes(cacert, "cacert")
        try:
            trust = ssl.Certificate.loadPEM(data)
        except Exception:  # noqa: BLE001 - pyOpenSSL raises several types for bad input
            raise InputError("cacert", f"{cacert!r} is not a PEM certificate") from None
    client = None
    if cert is not None:
        cert_data = read_bytes(cert, "cert")
        key_data = read_bytes(key, "key") if key is not None else cert_data
        try:
            ssl.Certificate.loadPEM(cert_data)
        except Exception:  # noqa: BLE001
            raise InputError("cert", f"{cert!r} is not a PEM certificate") from None
        try:
            load_pem_private_key(key_data, password=None)
        except (ValueError, TypeError):  # not PEM, or encrypted
            where = "key" if key is not None else "cert"
            raise InputError(where, f"{key or cert!r} holds no unencrypted PEM private key") from None
        try:
            client = ssl.PrivateCertificate.loadPEM(cert_data + b"\n" + key_data)
        except Exception:  # noqa: BLE001 - Twisted's VerifyError when the key is another certificate's
            raise InputError("key", f"{key or cert!r} is not the key of {cert!r}") from None
    return TlsClient(trust=trust, client=client, insecure=insecure, groups=group_list)


# -- certificates for compare --tls and the tests ----------------------------------


@dataclass(frozen=True)
class CertificateFiles:
    """Paths of a CA certificate, and of a certificate it signed with that certificate's key."""

    ca: Path
    cert: Path
    key: Path


def _name(common_name: str) -> Any:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _pem(obj: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    if hasattr(obj, "public_bytes"):
        return obj.public_bytes(serialization.Encoding.PEM)  # type: ignore[no-any-return]
    return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,  # type: ignore[no-any-return]
                             serialization.NoEncryption())


def _sign(subject: str, key: Any, issuer: tuple[str, Any] | None, *, ca: bool, names: tuple[str, ...] = (),
          client: bool = False) -> Any:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID

    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = (subject, key) if issuer is None else issuer
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer_name))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False),
            critical=True)
    else:
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if names:
        alt = [x509.IPAddress(ipaddress.ip_address(n)) if isIPAddress(n) or isIPv6Address(n) else x509.DNSName(n)
               for n in names]
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def write_self_signed(directory: str | Path, names: tuple[str, ...] = ("localhost", "127.0.0.1"), *,
                      client: bool = False, prefix: str = "") -> CertificateFiles:
    """A new CA (``ca.pem``) and a certificate it signed for ``names`` (``cert.pem``, its key ``key.pem``).

    ``client``: the certificate is for a client (TLS client authentication)
    rather than a server.  ``prefix`` goes before each file name.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    ca_key, leaf_key = _key(), _key()
    ca_name = f"loadgen test CA {prefix or 'default'}"
    ca_cert = _sign(ca_name, ca_key, None, ca=True)
    leaf = _sign(names[0] if names else "loadgen", leaf_key, (ca_name, ca_key), ca=False, names=names,
                 client=client)
    files = CertificateFiles(ca=out / f"{prefix}ca.pem", cert=out / f"{prefix}cert.pem", key=out / f"{prefix}key.pem")
    files.ca.write_bytes(_pem(ca_cert))
    files.cert.write_bytes(_pem(leaf))
    files.key.write_bytes(_pem(leaf_key))
    files.key.chmod(0o600)
    return files
