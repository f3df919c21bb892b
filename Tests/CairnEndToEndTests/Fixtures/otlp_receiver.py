#!/usr/bin/env python3
"""A minimal OTLP/HTTP trace receiver for the tests (what a collector's otlphttp receiver
does, JSON encoding only): POST /v1/traces bodies are appended, one JSON line each, to
argv[2]; its port is written to argv[1]. Answers as the OTLP spec says: 200 and an empty
ExportTraceServiceResponse."""
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port_file, log_file = sys.argv[1], sys.argv[2]

class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path != "/v1/traces" or not self.headers.get("Content-Type", "").startswith("application/json"):
            self.send_response(415 if self.path == "/v1/traces" else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        with open(log_file, "a") as f:
            f.write(json.dumps(json.loads(body)) + "\n")
        data = b"{}"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
import os
os.rename(port_file + ".tmp", port_file)
server.serve_forever()
