"""The boot test's https host on the guest's loopback: serves a directory.

Usage: www.py HOST PORT DIR CERT KEY
"""
import functools
import http.server
import ssl
import sys


def main():
    host, port, root, cert, key = sys.argv[1:6]
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=root)
    server = http.server.ThreadingHTTPServer((host, int(port)), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
