#!/usr/bin/env python3
"""A minimal OTLP/HTTP trace receiver for the tests (what a collector's otlphttp receiver
does): POST /v1/traces with Content-Type application/x-protobuf, an
ExportTraceServiceRequest. Each request is written, one JSON line each, to argv[2] in
OTLP/JSON's shape (ids as hex, as the OTLP spec says); its port is written to argv[1].
Answers as the spec says: 200 and an empty ExportTraceServiceResponse.

The protobuf wire format is walked here for the fields the tests read (the OTLP trace
protos, opentelemetry/proto/trace/v1/trace.proto and common/v1/common.proto), so that the
tests need nothing beyond Debian's python3."""
import json, os, struct, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port_file, log_file = sys.argv[1], sys.argv[2]


def fields(buf):
    """(number, wire type, value) of each field of a message: varints as ints, fixed64 and
    fixed32 as bytes, length-delimited as bytes."""
    i = 0
    while i < len(buf):
        key, i = varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 2:
            n, i = varint(buf, i)
            value, i = buf[i:i + n], i + n
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError("wire type %d" % wire)
        yield number, wire, value


def varint(buf, i):
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def any_value(buf):
    for n, w, v in fields(buf):
        if n == 1: return {"stringValue": v.decode()}
        if n == 2: return {"boolValue": bool(v)}
        if n == 3: return {"intValue": str(v - (1 << 64) if v >= 1 << 63 else v)}
        if n == 4: return {"doubleValue": struct.unpack("<d", v)[0]}
        if n == 5: return {"arrayValue": {"values": [any_value(x) for m, _, x in fields(v) if m == 1]}}
        if n == 7: return {"bytesValue": v.hex()}
    return {}


def key_value(buf):
    kv = {}
    for n, w, v in fields(buf):
        if n == 1: kv["key"] = v.decode()
        if n == 2: kv["value"] = any_value(v)
    return kv


def span(buf):
    s = {"attributes": [], "events": []}
    for n, w, v in fields(buf):
        if n == 1: s["traceId"] = v.hex()
        elif n == 2: s["spanId"] = v.hex()
        elif n == 4: s["parentSpanId"] = v.hex()
        elif n == 5: s["name"] = v.decode()
        elif n == 6: s["kind"] = v
        elif n == 7: s["startTimeUnixNano"] = str(struct.unpack("<Q", v)[0])
        elif n == 8: s["endTimeUnixNano"] = str(struct.unpack("<Q", v)[0])
        elif n == 9: s["attributes"].append(key_value(v))
        elif n == 11:
            e = {"attributes": []}
            for m, _, x in fields(v):
                if m == 2: e["name"] = x.decode()
                if m == 3: e["attributes"].append(key_value(x))
            s["events"].append(e)
        elif n == 15:
            st = {}
            for m, _, x in fields(v):
                if m == 2: st["message"] = x.decode()
                if m == 3: st["code"] = x
            s["status"] = st
    return s


def request(buf):
    out = {"resourceSpans": []}
    for n, _, rs in fields(buf):
        if n != 1: continue
        r = {"scopeSpans": []}
        for m, _, ss in fields(rs):
            if m != 2: continue
            r["scopeSpans"].append({"spans": [span(x) for k, _, x in fields(ss) if k == 2]})
        out["resourceSpans"].append(r)
    return out


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, status, data=b"", kind="application/x-protobuf"):
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path != "/v1/traces":
            return self.answer(404)
        if self.headers.get("Content-Type", "") != "application/x-protobuf":
            return self.answer(415)
        try:
            decoded = request(body)
        except Exception as e:  # a malformed request: 400, as a collector answers
            return self.answer(400, str(e).encode(), "text/plain")
        with open(log_file, "a") as f:
            f.write(json.dumps(decoded) + "\n")
        self.answer(200)


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename(port_file + ".tmp", port_file)
server.serve_forever()
