"""
Certificates for TLS tests: a CA, and server/client certificates it signs,
made in-process with C{cryptography}.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass
class Issued:
    """
    A certificate and its key, as objects and as PEM.
    """

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def certPem(self) -> bytes:
        """
        The certificate in PEM.
        """
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def keyPem(self) -> bytes:
        """
        The private key in unencrypted PKCS#8 PEM.
        """
        return self.key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    @property
    def fingerprint256(self) -> str:
        """
        Lower-case hex SHA-256 of the DER certificate.
        """
        return hashlib.sha256(
            self.certificate.public_bytes(serialization.Encoding.DER)).hexdigest()

    @property
    def subject(self) -> str:
        """
        The subject in RFC 4514 form (C{CN=client,O=pyenvoy tests}).
        """
        return self.certificate.subject.rfc4514_string()

    def write(self, directory: str, name: str) -> tuple[str, str]:
        """
        Write C{<name>.pem} and C{<name>.key} into C{directory}; return
        their paths.
        """
        cert = os.path.join(directory, f"{name}.pem")
        key = os.path.join(directory, f"{name}.key")
        with open(cert, "wb") as f:
            f.write(self.certPem)
        with open(key, "wb") as f:
            f.write(self.keyPem)
        return cert, key


def _name(commonName: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pyenvoy tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, commonName)])


def _builder(subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey
             ) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(issuer).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2)))


def makeCA(commonName: str = "pyenvoy test CA") -> Issued:
    """
    A self-signed CA.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(commonName)
    cert = (_builder(name, name, key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return Issued(cert, key)


def issue(ca: Issued, commonName: str, dns: tuple[str, ...] = (), uris: tuple[str, ...] = (),
          ips: tuple[str, ...] = (), emails: tuple[str, ...] = (),
          server: bool = True) -> Issued:
    """
    A leaf certificate signed by C{ca} with the given SANs, for server or
    client authentication.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    names += [x509.UniformResourceIdentifier(u) for u in uris]
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    names += [x509.RFC822Name(e) for e in emails]
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (_builder(_name(commonName), ca.certificate.subject, key)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   ca.key.public_key()), critical=False))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)
