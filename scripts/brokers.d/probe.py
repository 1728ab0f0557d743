#!/usr/bin/env python3
"""Small protocol-level health probes used by scripts/brokers (stdlib only).

  probe.py kafka HOST PORT     Metadata request; OK when a broker and a controller answer
  probe.py tcp HOST PORT       OK when the port accepts a TCP connection
  probe.py http URL [BODY]     OK when GET URL answers 200 (and its body starts with BODY)
  probe.py kafka-id            prints a new random Kafka cluster id

Exit status 0 means healthy; a one-line reason goes to stderr otherwise.
"""
import base64
import socket
import struct
import sys
import urllib.request
import uuid

TIMEOUT = 3.0


def _recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by broker")
        buf += chunk
    return buf


def kafka(host, port):
    client_id = b"anychannel-brokers-probe"
    # request header v1: api_key=3 (Metadata), api_version=4, correlation_id, client_id
    header = struct.pack(">hhih", 3, 4, 7, len(client_id)) + client_id
    # Metadata v4 body: topics = empty array (no topics), allow_auto_topic_creation=false
    body = struct.pack(">ib", 0, 0)
    msg = header + body
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as s:
        s.settimeout(TIMEOUT)
        s.sendall(struct.pack(">i", len(msg)) + msg)
        size = struct.unpack(">i", _recv_exact(s, 4))[0]
        data = _recv_exact(s, size)
    pos = 0

    def take(fmt):
        nonlocal pos
        vals = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return vals

    def take_str():
        nonlocal pos
        (n,) = take(">h")
        if n < 0:
            return None
        s = data[pos:pos + n].decode()
        pos += n
        return s

    corr, _throttle, nbrokers = take(">iii")
    if corr != 7:
        raise RuntimeError("unexpected correlation id %d" % corr)
    brokers = []
    for _ in range(nbrokers):
        (node,) = take(">i")
        bhost = take_str()
        (bport,) = take(">i")
        take_str()  # rack
        brokers.append("%d@%s:%d" % (node, bhost, bport))
    cluster = take_str()
    (controller,) = take(">i")
    if not brokers:
        raise RuntimeError("metadata lists no broker yet")
    if controller < 0:
        raise RuntimeError("no active controller yet")
    return "cluster %s, brokers %s, controller %d" % (cluster, ",".join(brokers), controller)


def tcp(host, port):
    with socket.create_connection((host, int(port)), timeout=TIMEOUT):
        return "accepts connections"


def http(url, expect=None):
    with urllib.request.urlopen(url, timeout=TIMEOUT) as r:
        body = r.read().decode(errors="replace")
        if r.status != 200:
            raise RuntimeError("HTTP %d" % r.status)
    if expect is not None and not body.startswith(expect):
        raise RuntimeError("unexpected answer %r" % body[:80])
    return body.strip()[:80]


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    kind, args = argv[1], argv[2:]
    if kind == "kafka-id":
        print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))
        return 0
    fn = {"kafka": kafka, "tcp": tcp, "http": http}.get(kind)
    if fn is None:
        print("unknown probe %r" % kind, file=sys.stderr)
        return 2
    try:
        info = fn(*args)
    except Exception as exc:  # any failure means "not healthy yet"
        print("%s: %s" % (type(exc).__name__, exc), file=sys.stderr)
        return 1
    if "-v" in sys.argv or sys.stdout.isatty():
        print(info)
    return 0


if __name__ == "__main__":
    sys.exit(main([a for a in sys.argv if a != "-v"]))
