#!/usr/bin/env python3
"""Small protocol-level health probes used by scripts/brokers (stdlib only).

  probe.py kafka HOST PORT     Metadata request; OK when a broker and a controller answer
                               and a group coordinator is found
  probe.py tcp HOST PORT       OK when the port accepts a TCP connection
  probe.py http URL [BODY]     OK when GET URL answers 200 (and its body starts with BODY)
  probe.py kafka-id            prints a new random Kafka cluster id

Secured listeners (user and password from $CHANNELS_PROBE_USER / $CHANNELS_PROBE_PASSWORD,
never from the command line):

  probe.py kafka-tls HOST PORT CAFILE           Metadata request over TLS (CA and host checked)
  probe.py kafka-scram HOST PORT MECHANISM      SASL SCRAM-SHA-256/512 login, then Metadata
  probe.py amqp-login HOST PORT [CAFILE]        AMQP 0-9-1 PLAIN login (TLS with CAFILE)
  probe.py mqtt-connect HOST PORT [CAFILE]      MQTT 3.1.1 CONNECT accepted (TLS with CAFILE;
                                                with credentials when $CHANNELS_PROBE_USER is set)
  probe.py nsq-tls HOST PORT CAFILE             IDENTIFY tls_v1, then the TLS upgrade

Exit status 0 means healthy; a one-line reason goes to stderr otherwise.
"""
import base64
import hashlib
import hmac
import json
import os
import secrets
import socket
import ssl
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
        # The first group request makes the broker create its offsets topic; until that
        # is led, consumer groups get "coordinator not available": ask until it answers.
        _kafka_find_coordinator(sock, client_id)
    return info


def _kafka_find_coordinator(sock, client_id):
    # FindCoordinator v0: group id; answer: error_code, node_id, host, port
    group = b"anychannel-brokers-probe"
    header = struct.pack(">hhih", 10, 0, 9, len(client_id)) + client_id
    data = _kafka_call(sock, header + struct.pack(">h", len(group)) + group)
    (err,) = struct.unpack_from(">h", data, 4)
    if err:
        raise RuntimeError("group coordinator not available yet (error %d)" % err)


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


# ---------------------------------------------------------------- secured listeners
def _creds():
    user = os.environ.get("CHANNELS_PROBE_USER", "")
    password = os.environ.get("CHANNELS_PROBE_PASSWORD", "")
    return user, password


def _tls(sock, cafile, host):
    ctx = ssl.create_default_context(cafile=cafile)
    return ctx.wrap_socket(sock, server_hostname=host)


def _connect(host, port, cafile=None):
    sock = socket.create_connection((host, int(port)), timeout=TIMEOUT)
    sock.settimeout(TIMEOUT)
    if cafile:
        try:
            return _tls(sock, cafile, host)
        except Exception:
            sock.close()
            raise
    return sock


def _metadata(sock, client_id=b"anychannel-brokers-probe"):
    header = struct.pack(">hhih", 3, 4, 7, len(client_id)) + client_id
    info, _led = _kafka_metadata(_kafka_call(sock, header + struct.pack(">ib", -1, 0)))
    return info


def kafka_tls(host, port, cafile):
    with _connect(host, port, cafile) as sock:
        return "TLS %s: %s" % (sock.version(), _metadata(sock))


def _kstr(text):
    raw = text.encode()
    return struct.pack(">h", len(raw)) + raw


def kafka_scram(host, port, mechanism):
    user, password = _creds()
    if not user:
        raise RuntimeError("CHANNELS_PROBE_USER is not set")
    algo = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}[mechanism.upper()]
    cid = b"anychannel-brokers-probe"
    with _connect(host, port) as sock:
        # SaslHandshake v1 (api 17)
        data = _kafka_call(sock, struct.pack(">hhih", 17, 1, 11, len(cid)) + cid + _kstr(mechanism.upper()))
        (err,) = struct.unpack_from(">h", data, 4)
        if err:
            raise RuntimeError("SaslHandshake refused %s (error %d)" % (mechanism, err))

        def authenticate(payload, corr):
            # SaslAuthenticate v0 (api 36): auth_bytes -> error_code, error_message, auth_bytes
            msg = struct.pack(">hhih", 36, 0, corr, len(cid)) + cid + struct.pack(">i", len(payload)) + payload
            resp = _kafka_call(sock, msg)
            pos = 4
            (code,) = struct.unpack_from(">h", resp, pos)
            pos += 2
            (n,) = struct.unpack_from(">h", resp, pos)
            pos += 2
            text = resp[pos:pos + max(n, 0)].decode(errors="replace")
            pos += max(n, 0)
            if code:
                raise PermissionError("SCRAM login refused (error %d: %s)" % (code, text))
            (n,) = struct.unpack_from(">i", resp, pos)
            return resp[pos + 4:pos + 4 + max(n, 0)]

        nonce = base64.b64encode(secrets.token_bytes(18)).decode()
        first_bare = "n=%s,r=%s" % (user.replace("=", "=3D").replace(",", "=2C"), nonce)
        server_first = authenticate(("n,," + first_bare).encode(), 12).decode()
        fields = dict(item.split("=", 1) for item in server_first.split(","))
        if not fields["r"].startswith(nonce):
            raise RuntimeError("SCRAM: server nonce does not extend ours")
        salted = hashlib.pbkdf2_hmac(algo, password.encode(), base64.b64decode(fields["s"]), int(fields["i"]))
        client_key = hmac.new(salted, b"Client Key", algo).digest()
        stored = hashlib.new(algo, client_key).digest()
        final_bare = "c=biws,r=" + fields["r"]
        auth_message = ",".join((first_bare, server_first, final_bare)).encode()
        signature = hmac.new(stored, auth_message, algo).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        server_final = authenticate((final_bare + ",p=" + base64.b64encode(proof).decode()).encode(), 13)
        server_key = hmac.new(salted, b"Server Key", algo).digest()
        expected = "v=" + base64.b64encode(hmac.new(server_key, auth_message, algo).digest()).decode()
        if server_final.decode() != expected:
            raise RuntimeError("SCRAM: the server signature does not match")
        return "%s login as %s: %s" % (mechanism.upper(), user, _metadata(sock))


def _amqp_frames(sock):
    buf = b""
    while True:
        while len(buf) < 7:
            chunk = sock.recv(4096)
            if not chunk:
                raise PermissionError("connection closed by the broker (login refused?)")
            buf += chunk
        ftype, _chan, size = struct.unpack(">BHI", buf[:7])
        while len(buf) < 8 + size:
            chunk = sock.recv(4096)
            if not chunk:
                raise PermissionError("connection closed by the broker (login refused?)")
            buf += chunk
        payload, buf = buf[7:7 + size], buf[8 + size:]
        if ftype == 1:
            yield struct.unpack(">HH", payload[:4]), payload[4:]


def _amqp_method(cls, meth, args):
    payload = struct.pack(">HH", cls, meth) + args
    return struct.pack(">BHI", 1, 0, len(payload)) + payload + b"\xce"


def _shortstr(text):
    raw = text.encode()
    return struct.pack(">B", len(raw)) + raw


def amqp_login(host, port, cafile=None):
    user, password = _creds()
    if not user:
        raise RuntimeError("CHANNELS_PROBE_USER is not set")
    with _connect(host, port, cafile) as sock:
        sock.sendall(b"AMQP\x00\x00\x09\x01")
        frames = _amqp_frames(sock)
        (cls, meth), _ = next(frames)
        if (cls, meth) != (10, 10):
            raise RuntimeError("expected connection.start, got %d.%d" % (cls, meth))
        response = ("\0%s\0%s" % (user, password)).encode()
        sock.sendall(_amqp_method(10, 11, struct.pack(">I", 0) + _shortstr("PLAIN")
                                  + struct.pack(">I", len(response)) + response + _shortstr("en_US")))
        (cls, meth), args = next(frames)
        if (cls, meth) != (10, 30):
            raise PermissionError("login refused (method %d.%d)" % (cls, meth))
        channel_max, frame_max, _hb = struct.unpack(">HIH", args[:8])
        sock.sendall(_amqp_method(10, 31, struct.pack(">HIH", channel_max, frame_max, 0)))
        sock.sendall(_amqp_method(10, 40, _shortstr("/") + _shortstr("") + b"\x00"))
        (cls, meth), _ = next(frames)
        if (cls, meth) != (10, 41):
            raise PermissionError("vhost / refused (method %d.%d)" % (cls, meth))
        sock.sendall(_amqp_method(10, 50, struct.pack(">H", 200) + _shortstr("probe done") + struct.pack(">HH", 0, 0)))
        next(frames)  # close-ok
        tls = " over TLS %s" % sock.version() if cafile else ""
        return "AMQP login as %s%s" % (user, tls)


def _mqtt_str(text):
    raw = text.encode()
    return struct.pack(">H", len(raw)) + raw


def mqtt_connect(host, port, cafile=None):
    user, password = _creds()
    flags = 0x02  # clean session
    body = _mqtt_str("anychannel-brokers-probe-%d" % os.getpid())
    if user:
        flags |= 0xC0
        body += _mqtt_str(user) + _mqtt_str(password)
    variable = _mqtt_str("MQTT") + struct.pack(">BBH", 4, flags, 10)
    rest = variable + body
    length, enc = len(rest), b""
    while True:
        byte, length = length % 128, length // 128
        enc += bytes([byte | (0x80 if length else 0)])
        if not length:
            break
    with _connect(host, port, cafile) as sock:
        sock.sendall(b"\x10" + enc + rest)
        ack = _recv_exact(sock, 4)
        if ack[0] != 0x20:
            raise RuntimeError("expected CONNACK, got packet type %d" % (ack[0] >> 4))
        if ack[3] != 0:
            raise PermissionError("CONNACK refused the connection (return code %d)" % ack[3])
        sock.sendall(b"\xe0\x00")
        who = " as %s" % user if user else " anonymously"
        tls = " over TLS %s" % sock.version() if cafile else ""
        return "MQTT connection accepted%s%s" % (who, tls)


def nsq_tls(host, port, cafile):
    with _connect(host, port) as sock:
        identify = json.dumps({"client_id": "anychannel-brokers-probe", "feature_negotiation": True,
                               "tls_v1": True, "user_agent": "anychannel-probe"}).encode()
        sock.sendall(b"  V2" + b"IDENTIFY\n" + struct.pack(">i", len(identify)) + identify)

        def frame(s):
            size, ftype = struct.unpack(">ii", _recv_exact(s, 8))
            data = _recv_exact(s, size - 4)
            if ftype != 0:
                raise RuntimeError("nsqd answered with an error: %r" % data[:80])
            return data

        answer = json.loads(frame(sock))
        if not answer.get("tls_v1"):
            raise RuntimeError("nsqd does not offer TLS (tls_v1 false)")
        tls = _tls(sock, cafile, host)
        tls.settimeout(TIMEOUT)
        if frame(tls) != b"OK":
            raise RuntimeError("no OK after the TLS upgrade")
        return "nsqd TLS %s upgrade in IDENTIFY" % tls.version()


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    kind, args = argv[1], argv[2:]
    if kind == "kafka-id":
        print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))
        return 0
    fn = {"kafka": kafka, "tcp": tcp, "http": http, "kafka-tls": kafka_tls, "kafka-scram": kafka_scram,
          "amqp-login": amqp_login, "mqtt-connect": mqtt_connect, "nsq-tls": nsq_tls}.get(kind)
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
