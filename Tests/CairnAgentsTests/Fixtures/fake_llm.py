#!/usr/bin/env python3
"""A fake LLM server for Cairn's tests: speaks the shapes of OpenAI Chat Completions
(/v1/chat/completions) and Anthropic Messages (/v1/messages), with and without streaming.

Usage: fake_llm.py PORT_FILE PLAN_FILE LOG_FILE
The plan is {"queue": [STEP, ...], "default": STEP}; each request takes the next step
(re-read from the file on every request, so tests may append). A STEP is one of:
  {"status": 429, "retry_after": "2"}     an error status (optionally with Retry-After)
  {"delay": 3, ...}                        sleep first, then do the rest of the step
  {"malformed": true}                      200 with a body that is not JSON
  {"raw": "/path/file", "cut": N, "content_type": "..."}
                                           200 with the file's bytes (the first N only, with
                                           "cut"), byte for byte, then the connection closes
                                           (no content-length); the content type defaults to
                                           text/event-stream for *.sse, application/json otherwise
  {"raw_body": "text", "content_type": ...} the same with inline bytes
  {"ignore_stream": true, "reply": ...}     answers plain JSON even when asked to stream
  {"status": 401, "echo_key": true}        an error whose body quotes the key it was sent
  {"reply": {"content": "...", "tool_calls": [{"name", "arguments"}], "usage": {"input", "output"},
             "refusal": "...", "bad_arguments": true}}
Every request is appended to LOG_FILE as one JSON line: path, body, whether auth was sent.
"""
import json, sys, time, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port_file, plan_file, log_file = sys.argv[1:4]
lock = threading.Lock()
state = {"n": 0}

def next_step():
    with lock:
        plan = json.load(open(plan_file))
        q = plan.get("queue", [])
        i = state["n"]
        state["n"] += 1
        return q[i] if i < len(q) else plan.get("default", {"reply": {"content": "ok"}})

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass

    def send(self, status, body, ctype="application/json", headers=None):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(data)))
        for k, v in (headers or {}).items(): self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        n = int(self.headers.get("content-length", 0))
        body = json.loads(self.rfile.read(n) or b"{}")
        auth = bool(self.headers.get("authorization") or self.headers.get("x-api-key"))
        with lock:
            with open(log_file, "a") as f:
                f.write(json.dumps({"path": self.path, "body": body, "auth": auth}) + "\n")
        step = next_step()
        if step.get("delay"): time.sleep(step["delay"])
        if step.get("status"):
            h = {"retry-after": str(step["retry_after"])} if "retry_after" in step else {}
            msg = "fake %d" % step["status"]
            if step.get("echo_key"):
                msg += ": invalid key '%s'" % (self.headers.get("x-api-key") or self.headers.get("authorization") or "")
            return self.send(step["status"], json.dumps({"error": {"message": msg}}), headers=h)
        if "raw" in step or "raw_body" in step:
            data = step["raw_body"].encode() if "raw_body" in step else open(step["raw"], "rb").read()
            if "cut" in step: data = data[:step["cut"]]
            ctype = step.get("content_type") or ("text/event-stream" if step.get("raw", "").endswith(".sse") else "application/json")
            self.send_response(step.get("raw_status", 200))
            self.send_header("content-type", ctype)
            self.send_header("connection", "close")
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
            self.close_connection = True
            return
        if step.get("malformed"):
            return self.send(200, "<html>definitely not json")
        r = step.get("reply", {"content": "ok"})
        anthropic = self.path.endswith("/messages")
        if body.get("stream") and not step.get("ignore_stream"):
            return self.stream(r, anthropic, body)
        return self.send(200, json.dumps(self.anthropic(r, body) if anthropic else self.openai(r, body)))

    def calls(self, r):
        out = []
        for i, c in enumerate(r.get("tool_calls", [])):
            args = "{not json" if r.get("bad_arguments") else json.dumps(c.get("arguments", {}))
            out.append({"id": "call_%d" % i, "name": c["name"], "arguments": args})
        return out

    def openai(self, r, body):
        msg = {"role": "assistant", "content": r.get("content", "")}
        calls = self.calls(r)
        if calls:
            msg["tool_calls"] = [{"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}} for c in calls]
        if r.get("refusal"): msg["refusal"] = r["refusal"]
        u = r.get("usage", {"input": 11, "output": 7})
        return {"id": "x", "model": body.get("model"), "choices": [{"index": 0, "message": msg, "finish_reason": "tool_calls" if calls else "stop"}],
                "usage": {"prompt_tokens": u["input"], "completion_tokens": u["output"]}}

    def anthropic(self, r, body):
        blocks = []
        if r.get("content"): blocks.append({"type": "text", "text": r["content"]})
        for c in self.calls(r):
            try: inp = json.loads(c["arguments"])
            except Exception: inp = {}
            blocks.append({"type": "tool_use", "id": c["id"], "name": c["name"], "input": inp})
        u = r.get("usage", {"input": 11, "output": 7})
        stop = "refusal" if r.get("refusal") else ("tool_use" if r.get("tool_calls") else "end_turn")
        return {"id": "x", "type": "message", "model": body.get("model"), "content": blocks, "stop_reason": stop,
                "usage": {"input_tokens": u["input"], "output_tokens": u["output"]}}

    def stream(self, r, anthropic, body):
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("connection", "close")
        self.end_headers()
        def ev(obj, name=None):
            if name: self.wfile.write(("event: %s\n" % name).encode())
            self.wfile.write(("data: %s\n\n" % json.dumps(obj)).encode())
            self.wfile.flush()
        parts = r.get("content", "").split(" ") if r.get("content") else []
        words = [w + (" " if i < len(parts) - 1 else "") for i, w in enumerate(parts)]
        u = r.get("usage", {"input": 11, "output": 7})
        if anthropic:
            ev({"type": "message_start", "message": {"usage": {"input_tokens": u["input"], "output_tokens": 0}}}, "message_start")
            ev({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}, "content_block_start")
            for w in words: ev({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}}, "content_block_delta")
            for i, c in enumerate(self.calls(r)):
                ev({"type": "content_block_start", "index": i + 1, "content_block": {"type": "tool_use", "id": c["id"], "name": c["name"], "input": {}}}, "content_block_start")
                ev({"type": "content_block_delta", "index": i + 1, "delta": {"type": "input_json_delta", "partial_json": c["arguments"]}}, "content_block_delta")
            stop = "tool_use" if r.get("tool_calls") else "end_turn"
            ev({"type": "message_delta", "delta": {"stop_reason": stop}, "usage": {"output_tokens": u["output"]}}, "message_delta")
            ev({"type": "message_stop"}, "message_stop")
        else:
            for w in words: ev({"choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]})
            for i, c in enumerate(self.calls(r)):
                ev({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": i, "id": c["id"], "function": {"name": c["name"], "arguments": c["arguments"]}}]}, "finish_reason": None}]})
            ev({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls" if r.get("tool_calls") else "stop"}]})
            ev({"choices": [], "usage": {"prompt_tokens": u["input"], "completion_tokens": u["output"]}})
            self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True

srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
with open(port_file + ".tmp", "w") as f: f.write(str(srv.server_address[1]))
import os; os.rename(port_file + ".tmp", port_file)
srv.serve_forever()
