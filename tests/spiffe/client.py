"""A SPIFFE workload for meshca's tests: py-spiffe, unchanged, against the
agent's Workload API (SPIFFE_ENDPOINT_SOCKET). Prints one JSON object per
line for the Rust test to check.

  client.py fetch             the SVID and bundles, validated by py-spiffe
  client.py watch N SECONDS   an open FetchX509SVID stream until N distinct SVIDs
  client.py bundles N SECONDS an open FetchX509Bundles stream until N messages
  client.py crls              the CRLs of the first FetchX509SVID and FetchX509Bundles messages
  client.py no-header         a call without the security header
  client.py jwt AUDIENCE      a JWT-SVID, the JWT bundles, and the token validated
  client.py jwt-check TOKEN AUDIENCE   ValidateJWTSVID's verdict on TOKEN
  client.py jwt-fetch AUDIENCE [ID]    FetchJWTSVID's status code
  client.py jwt-bundles N SECONDS      an open FetchJWTBundles stream until N messages
  client.py federated TD CHAIN TOKEN AUDIENCE   a chain (PEM file) and a JWT-SVID
                              of trust domain TD, verified with nothing but the
                              bundles the Workload API gives
"""

import base64
import json
import os
import sys
import threading
import time

import grpc
from cryptography import x509 as cx509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from spiffe import JwtBundle, JwtSvid, TrustDomain, WorkloadApiClient, X509Bundle
from spiffe._proto import workload_pb2, workload_pb2_grpc


def b64(der):
    return base64.b64encode(der).decode()


def ders(certs):
    return sorted(b64(c.public_bytes(Encoding.DER)) for c in certs)


def public_key(key):
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo).hex()


def describe(context):
    svid = context.default_svid
    bundle = context.x509_bundle_set.get_bundle_for_trust_domain(
        TrustDomain(svid.spiffe_id.trust_domain.name)
    )
    return {
        "received_at": time.time(),
        "spiffe_id": str(svid.spiffe_id),
        "serial": format(svid.leaf.serial_number, "x"),
        "chain": [b64(c.public_bytes(Encoding.DER)) for c in svid.cert_chain],
        "key_matches": public_key(svid.private_key.public_key())
        == public_key(svid.leaf.public_key()),
        "ec_key": isinstance(svid.private_key, ec.EllipticCurvePrivateKey),
        "bundle": ders(bundle.x509_authorities),
    }


def emit(obj):
    print(json.dumps(obj), flush=True)


def fetch():
    with WorkloadApiClient(default_timeout=20) as client:
        context = client.fetch_x509_context()
        bundles = client.fetch_x509_bundles()
        out = describe(context)
        out["bundle_trust_domains"] = sorted(str(b.trust_domain) for b in bundles.bundles)
        emit(out)


def watch(count, seconds):
    seen = {}
    done = threading.Event()
    errors = []

    def on_success(context):
        d = describe(context)
        if d["serial"] not in seen:
            seen[d["serial"]] = d
            emit(d)
        if len(seen) >= count:
            done.set()

    def on_error(e):
        errors.append(str(e))
        done.set()

    with WorkloadApiClient() as client:
        handle = client.stream_x509_contexts(on_success, on_error, retry_connect=False)
        done.wait(seconds)
        handle.cancel()
    if errors:
        emit({"error": errors[0]})


def raw_stub():
    target = "unix:" + os.environ["SPIFFE_ENDPOINT_SOCKET"].removeprefix("unix://")
    return workload_pb2_grpc.SpiffeWorkloadAPIStub(grpc.insecure_channel(target))


def bundles(count, seconds):
    stream = raw_stub().FetchX509Bundles(
        workload_pb2.X509BundlesRequest(),
        metadata=[("workload.spiffe.io", "true")],
        timeout=seconds,
    )
    for n, message in enumerate(stream, start=1):
        emit({
            "received_at": time.time(),
            "bundles": {
                k: ders(X509Bundle.parse_raw(TrustDomain(k), v).x509_authorities)
                for k, v in message.bundles.items()
            },
        })
        if n >= count:
            stream.cancel()
            break


def describe_crls(crls):
    out = []
    for der in crls:
        crl = cx509.load_der_x509_crl(der)
        out.append({
            "issuer": crl.issuer.rfc4514_string(),
            "revoked": sorted(format(r.serial_number, "x") for r in crl),
        })
    return out


def crls():
    header = [("workload.spiffe.io", "true")]
    svid = next(raw_stub().FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=header, timeout=10))
    bundles = next(raw_stub().FetchX509Bundles(workload_pb2.X509BundlesRequest(), metadata=header, timeout=10))
    emit({
        "svid_response": describe_crls(svid.crl),
        "bundles_response": describe_crls(bundles.crl),
    })


def no_header():
    try:
        next(raw_stub().FetchX509SVID(workload_pb2.X509SVIDRequest(), timeout=10))
        emit({"code": "OK"})
    except grpc.RpcError as e:
        emit({"code": e.code().name, "details": e.details()})


def kids(bundle_set):
    return {
        str(b.trust_domain): sorted(b.jwt_authorities.keys()) for b in bundle_set.bundles
    }


def jwt(audience):
    with WorkloadApiClient(default_timeout=20) as client:
        svid = client.fetch_jwt_svid(audience={audience})
        again = client.fetch_jwt_svid(audience={audience})
        bundles = client.fetch_jwt_bundles()
        bundle = bundles.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
        # py-spiffe's own offline check, with the keys the agent served.
        parsed = JwtSvid.parse_and_validate(svid.token, bundle, {audience})
        validated = client.validate_jwt_svid(svid.token, audience)
        emit({
            "spiffe_id": str(svid.spiffe_id),
            "token": svid.token,
            "cached": again.token == svid.token,
            "audience": sorted(svid.audience),
            "expiry": svid.expiry,
            "bundle_kids": kids(bundles),
            "offline_spiffe_id": str(parsed.spiffe_id),
            "validated_spiffe_id": str(validated.spiffe_id),
        })


def jwt_check(token, audience):
    try:
        stub = raw_stub()
        response = stub.ValidateJWTSVID(
            workload_pb2.ValidateJWTSVIDRequest(audience=audience, svid=token),
            metadata=[("workload.spiffe.io", "true")],
            timeout=10,
        )
        emit({"code": "OK", "spiffe_id": response.spiffe_id,
              "claims": sorted(response.claims.fields.keys())})
    except grpc.RpcError as e:
        emit({"code": e.code().name, "details": e.details()})


def jwt_fetch(audience, spiffe_id=""):
    try:
        response = raw_stub().FetchJWTSVID(
            workload_pb2.JWTSVIDRequest(audience=[audience] if audience else [], spiffe_id=spiffe_id),
            metadata=[("workload.spiffe.io", "true")],
            timeout=10,
        )
        emit({"code": "OK", "spiffe_id": response.svids[0].spiffe_id})
    except grpc.RpcError as e:
        emit({"code": e.code().name, "details": e.details()})


def jwt_bundles(count, seconds):
    stream = raw_stub().FetchJWTBundles(
        workload_pb2.JWTBundlesRequest(),
        metadata=[("workload.spiffe.io", "true")],
        timeout=seconds,
    )
    try:
        for n, message in enumerate(stream, start=1):
            emit({
                "received_at": time.time(),
                "kids": {
                    k: sorted(JwtBundle.parse(TrustDomain(k), v).jwt_authorities.keys())
                    for k, v in message.bundles.items()
                },
            })
            if n >= count:
                stream.cancel()
                break
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.CANCELLED:
            emit({"error": e.code().name, "details": e.details()})


def chain_verifies(chain, authorities):
    """Each certificate issued by the next, the last by an authority."""
    try:
        for child, parent in zip(chain, chain[1:]):
            child.verify_directly_issued_by(parent)
    except Exception:
        return False
    last = chain[-1]
    for authority in authorities:
        if last == authority:
            return True
        try:
            last.verify_directly_issued_by(authority)
            return True
        except Exception:
            continue
    return False


def federated(trust_domain, chain_file, token, audience):
    with WorkloadApiClient(default_timeout=20) as client:
        x509_bundles = client.fetch_x509_bundles()
        context = client.fetch_x509_context()
        jwt_bundles = client.fetch_jwt_bundles()
    td = TrustDomain(trust_domain)
    out = {
        "x509_trust_domains": sorted(str(b.trust_domain) for b in x509_bundles.bundles),
        "context_trust_domains": sorted(
            str(b.trust_domain) for b in context.x509_bundle_set.bundles
        ),
        "jwt_trust_domains": sorted(str(b.trust_domain) for b in jwt_bundles.bundles),
    }
    bundle = x509_bundles.get_bundle_for_trust_domain(td)
    with open(chain_file, "rb") as f:
        chain = cx509.load_pem_x509_certificates(f.read())
    out["x509_verified"] = bool(bundle) and chain_verifies(chain, bundle.x509_authorities)
    out["x509_authorities"] = ders(bundle.x509_authorities) if bundle else []
    try:
        svid = JwtSvid.parse_and_validate(
            token, jwt_bundles.get_bundle_for_trust_domain(td), [audience]
        )
        out["jwt_spiffe_id"] = str(svid.spiffe_id)
    except Exception as e:
        out["jwt_error"] = str(e)
    emit(out)


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    if command == "fetch":
        fetch()
    elif command == "watch":
        watch(int(args[0]), float(args[1]))
    elif command == "bundles":
        bundles(int(args[0]), float(args[1]))
    elif command == "no-header":
        no_header()
    elif command == "crls":
        crls()
    elif command == "jwt":
        jwt(args[0])
    elif command == "jwt-fetch":
        jwt_fetch(*args)
    elif command == "jwt-check":
        jwt_check(args[0], args[1])
    elif command == "federated":
        federated(*args[:4])
    elif command == "jwt-bundles":
        jwt_bundles(int(args[0]), float(args[1]))
    else:
        sys.exit(f"unknown command {command}")

