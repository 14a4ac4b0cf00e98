"""TLS clients that are not rustls, for meshca's tests of the key exchange
groups it negotiates: pyOpenSSL over the OpenSSL 4 bundled in
`cryptography`'s wheel (which offers the hybrid X25519MLKEM768 first), and
Python's own ssl module over the system's OpenSSL (Debian 12: 3.0, which
offers classical groups only). Both verify meshca's certificate against
the bundle.

  handshake.py HOST PORT SERVER_NAME CA_FILE

Prints one JSON object, a client that failed giving {"error": "..."}:
  {"pyopenssl": {"group": "X25519MLKEM768", "version": "TLSv1.3"},
   "stdlib": {"version": "TLSv1.3", "openssl": "OpenSSL 3.0.x ..."}}
"""

import json
import socket
import ssl
import sys

from OpenSSL import SSL


def pyopenssl(host, port, server_name, ca_file):
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.load_verify_locations(ca_file)
    ctx.set_verify(SSL.VERIFY_PEER, lambda _c, _x, _n, _d, ok: bool(ok))
    with socket.create_connection((host, port), timeout=10) as sock:
        # pyOpenSSL wants a blocking socket (a timeout makes it
        # non-blocking underneath).
        sock.settimeout(None)
        conn = SSL.Connection(ctx, sock)
        conn.set_tlsext_host_name(server_name.encode())
        conn.set_connect_state()
        conn.do_handshake()
        result = {
            "group": conn.get_group_name(),
            "version": conn.get_protocol_version_name(),
            "openssl": SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode(),
        }
        conn.shutdown()
        return result


def stdlib(host, port, server_name, ca_file):
    ctx = ssl.create_default_context(cafile=ca_file)
    with socket.create_connection((host, port), timeout=10) as sock:
        with ctx.wrap_socket(sock, server_hostname=server_name) as tls:
            return {"version": tls.version(), "openssl": ssl.OPENSSL_VERSION}


def attempt(client, *args):
    try:
        return client(*args)
    except (SSL.Error, ssl.SSLError, OSError) as e:
        return {"error": f"{type(e).__name__}: {e}"}


def main():
    host, port, server_name, ca_file = sys.argv[1:5]
    args = (host, int(port), server_name, ca_file)
    print(
        json.dumps(
            {
                "pyopenssl": attempt(pyopenssl, *args),
                "stdlib": attempt(stdlib, *args),
            }
        )
    )


if __name__ == "__main__":
    main()
