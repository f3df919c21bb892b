#!/usr/bin/env python3
"""A minimal MCP tool server over Streamable HTTP (POST, JSON responses) for the tests:
one tool, `lookup_customer`. Writes its port to argv[1]; logs each tools/call (tool, the
idempotency key in _meta) as a JSON line to argv[2]."""
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port_file, log_file = sys.argv[1], sys.argv[2]

class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, status, body=None, headers=None):
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.reply(405)

    def do_DELETE(self):
        self.reply(200)

    def do_POST(self):
        msg = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        method, mid = msg.get("method"), msg.get("id")
        if mid is None:
            return self.reply(202)
        if method == "initialize":
            result = {"protocolVersion": msg["params"].get("protocolVersion", "2025-06-18"),
                      "capabilities": {"tools": {"listChanged": False}},
                      "serverInfo": {"name": "http-desk", "version": "1"}}
            return self.reply(200, {"jsonrpc": "2.0", "id": mid, "result": result}, {"Mcp-Session-Id": "s1"})
        if method == "tools/list":
            tool = {"name": "lookup_customer", "description": "Look a customer up by email.",
                    "inputSchema": {"type": "object", "properties": {"email": {"type": "string"}}, "required": ["email"]}}
            return self.reply(200, {"jsonrpc": "2.0", "id": mid, "result": {"tools": [tool]}})
        if method == "tools/call":
            p = msg["params"]
            with open(log_file, "a") as f:
                f.write(json.dumps({"tool": p["name"], "key": (p.get("_meta") or {}).get("cairn/idempotency_key")}) + "\n")
            email = (p.get("arguments") or {}).get("email", "?")
            text = json.dumps({"email": email, "plan": "enterprise", "via": "http"})
            return self.reply(200, {"jsonrpc": "2.0", "id": mid, "result": {"content": [{"type": "text", "text": text}], "isError": False}})
        return self.reply(200, {"jsonrpc": "2.0", "id": mid, "error": {"code": -32601, "message": "no method " + str(method)}})

server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
import os
os.rename(port_file + ".tmp", port_file)
server.serve_forever()
