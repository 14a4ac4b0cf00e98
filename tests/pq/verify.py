"""ML-DSA as an implementation other than meshca's sees it: `cryptography`
51 (OpenSSL 4.1). Run with ./.venv-pq/bin/python.

  verify.py csr ALGORITHM SPIFFE_ID DNS_NAME
      A fresh key of ALGORITHM (ml-dsa-44|65|87, ecdsa-p256) and a CSR
      naming the identity, as a workload using `cryptography` makes them:
      prints {"key": PKCS#8 PEM, "csr": PEM}.
  verify.py chain CHAIN_PEM_FILE BUNDLE_PEM_FILE
      Each certificate's signature verified with its issuer's key, the
      last issuer found in the bundle: prints {"ok": true, "chain":
      [{"subject", "signature", "key"}...], "anchor": subject} or
      {"ok": false, "error": "..."}.
"""

import json
import sys

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, mldsa
from cryptography.x509.oid import NameOID

KEYS = {
    "ml-dsa-44": mldsa.MLDSA44PrivateKey.generate,
    "ml-dsa-65": mldsa.MLDSA65PrivateKey.generate,
    "ml-dsa-87": mldsa.MLDSA87PrivateKey.generate,
    "ecdsa-p256": lambda: ec.generate_private_key(ec.SECP256R1()),
}


def make_csr(algorithm, spiffe_id, dns_name):
    key = KEYS[algorithm]()
    digest = hashes.SHA256() if algorithm.startswith("ecdsa") else None
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_name)]))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(dns_name), x509.UniformResourceIdentifier(spiffe_id)]
            ),
            critical=False,
        )
        .sign(key, digest)
    )
    return {
        "key": key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
        "csr": csr.public_bytes(serialization.Encoding.PEM).decode(),
    }


def describe(cert):
    return {
        "subject": cert.subject.rfc4514_string(),
        "signature": cert.signature_algorithm_oid._name,
        "key": type(cert.public_key()).__name__,
    }


def verify_chain(chain_file, bundle_file):
    with open(chain_file, "rb") as f:
        chain = x509.load_pem_x509_certificates(f.read())
    with open(bundle_file, "rb") as f:
        bundle = x509.load_pem_x509_certificates(f.read())
    try:
        for cert, issuer in zip(chain, chain[1:]):
            cert.verify_directly_issued_by(issuer)
        last = chain[-1]
        anchors = [a for a in bundle if a.subject == last.issuer]
        for anchor in anchors:
            try:
                last.verify_directly_issued_by(anchor)
                return {
                    "ok": True,
                    "chain": [describe(c) for c in chain],
                    "anchor": anchor.subject.rfc4514_string(),
                    "anchor_key": type(anchor.public_key()).__name__,
                }
            except (InvalidSignature, ValueError, TypeError):
                continue
        return {"ok": False, "error": "no anchor in the bundle signed the chain"}
    except (InvalidSignature, ValueError, TypeError) as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}


def main():
    if sys.argv[1] == "csr":
        print(json.dumps(make_csr(*sys.argv[2:5])))
    elif sys.argv[1] == "chain":
        print(json.dumps(verify_chain(*sys.argv[2:4])))
    else:
        sys.exit(f"unknown command {sys.argv[1]}")


if __name__ == "__main__":
    main()
