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
    # Metadata v4 body: topics = null (all topics), allow_auto_topic_creation=false
    body = struct.pack(">ib", -1, 0)
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
        sock.settimeout(TIMEOUT)
        data = _kafka_call(sock, header + body)
        info, led = _kafka_metadata(data)
        if led:
            # The metadata image can name this broker leader a moment before its replica
            # manager has taken the partitions over: ask for the end offsets too.
            _kafka_list_offsets(sock, client_id, led)
    return info


def _kafka_call(sock, msg):
    sock.sendall(struct.pack(">i", len(msg)) + msg)
    size = struct.unpack(">i", _recv_exact(sock, 4))[0]
    return _recv_exact(sock, size)


def _kafka_list_offsets(sock, client_id, led):
    # ListOffsets v1: replica_id=-1, [topic, [partition, timestamp=-1 (latest)]]
    parts = [struct.pack(">hhih", 2, 1, 8, len(client_id)) + client_id, struct.pack(">ii", -1, len(led))]
    for topic, pidxs in led.items():
        name = topic.encode()
        parts.append(struct.pack(">h", len(name)) + name + struct.pack(">i", len(pidxs)))
        parts.extend(struct.pack(">iq", p, -1) for p in pidxs)
    data = _kafka_call(sock, b"".join(parts))
    pos = 4  # correlation id
    (ntopics,) = struct.unpack_from(">i", data, pos)
    pos += 4
    for _ in range(ntopics):
        (n,) = struct.unpack_from(">h", data, pos)
        tname = data[pos + 2:pos + 2 + n].decode()
        pos += 2 + n
        (nparts,) = struct.unpack_from(">i", data, pos)
        pos += 4
        for _ in range(nparts):
            pidx, perr, _ts, _off = struct.unpack_from(">ihqq", data, pos)
            pos += 22
            # 3: topic deleted meanwhile (fine); anything else: not serving that partition yet
            if perr not in (0, 3):
                raise RuntimeError("partition %s-%d not served yet (error %d)" % (tname, pidx, perr))


def _kafka_metadata(data):
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
    # after a restart the partitions get their leader back a moment after the broker
    # answers: "serving" means every existing partition has a leader again
    (ntopics,) = take(">i")
    partitions = 0
    led = {}
    for _ in range(ntopics):
        (terr,) = take(">h")
        tname = take_str()
        take(">b")  # is_internal
        (nparts,) = take(">i")
        for _ in range(nparts):
            perr, pidx, leader = take(">hii")
            for _ in range(2):  # replica_nodes, isr_nodes
                (n,) = take(">i")
                take(">%di" % max(n, 0))
            if perr != 0 or leader < 0:
                raise RuntimeError("partition %s-%d has no leader yet (error %d)" % (tname, pidx, perr))
            partitions += 1
            led.setdefault(tname, []).append(pidx)
        if terr != 0:
            raise RuntimeError("topic %s: error %d" % (tname, terr))
    info = "cluster %s, brokers %s, controller %d, %d topics / %d partitions served" % (
        cluster, ",".join(brokers), controller, ntopics, partitions)
    return info, led


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
