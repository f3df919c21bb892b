import Foundation
import MCP

// A small MCP tool server for the tests (issue 14), written with the same SDK: a help desk
// with `lookup_customer` and `send_reply`. Every call is logged to $HELPDESK_CALLS (one JSON
// line: tool, idempotency key, arguments); `send_reply` appends to $HELPDESK_OUTBOX unless
// that idempotency key was sent already. $HELPDESK_DIE_ONCE=FILE: the first send_reply
// (when FILE does not exist) creates FILE and exits mid-call, as a crashing server would.
// $HELPDESK_DIE_ON names the tool that dies so (default send_reply). $HELPDESK_DELAY_MS
// delays each send_reply.

let env = ProcessInfo.processInfo.environment

func append(_ line: String, to path: String?) {
    guard let path else { return }
    let fd = open(path, O_WRONLY | O_APPEND | O_CREAT, 0o644)
    guard fd >= 0 else { return }
    _ = (line + "\n").withCString { write(fd, $0, strlen($0)) }
    close(fd)
}

func text(_ v: Value?) -> String {
    guard let v, let data = try? JSONEncoder().encode(v) else { return "null" }
    return String(decoding: data, as: UTF8.self)
}

let server = Server(name: "helpdesk", version: "1.0", capabilities: .init(tools: .init(listChanged: false)))
await server.withMethodHandler(ListTools.self) { _ in
    append(#"{"list": true}"#, to: env["HELPDESK_CALLS"])
    return .init(tools: [
        Tool(name: "lookup_customer", description: "Look a customer up by email.", inputSchema: [
            "type": "object", "properties": ["email": ["type": "string"]], "required": ["email"],
        ]),
        Tool(name: "send_reply", description: "Send an email reply to the customer.", inputSchema: [
            "type": "object", "properties": ["to": ["type": "string"], "subject": ["type": "string"], "body": ["type": "string"]],
            "required": ["to", "subject", "body"],
        ]),
    ])
}
await server.withMethodHandler(CallTool.self) { params in
    let key = params._meta?["cairn/idempotency_key"]?.stringValue ?? ""
    append("{\"tool\": \(text(.string(params.name))), \"key\": \(text(.string(key))), \"arguments\": \(text(params.arguments.map { .object($0) }))}", to: env["HELPDESK_CALLS"])
    if params.name == (env["HELPDESK_DIE_ON"] ?? "send_reply"), let flag = env["HELPDESK_DIE_ONCE"], !FileManager.default.fileExists(atPath: flag) {
        _ = FileManager.default.createFile(atPath: flag, contents: nil)
        exit(3)
    }
    switch params.name {
    case "lookup_customer":
        let email = params.arguments?["email"]?.stringValue ?? "?"
        return .init(content: [.text(text: "{\"email\": \(text(.string(email))), \"plan\": \"pro\", \"orders\": 12}", annotations: nil, _meta: nil)], isError: false)
    case "send_reply":
        if let ms = env["HELPDESK_DELAY_MS"].flatMap(Int.init) { try? await Task.sleep(for: .milliseconds(ms)) }
        let outbox = env["HELPDESK_OUTBOX"] ?? "/dev/null"
        let sent = (try? String(contentsOfFile: outbox, encoding: .utf8)) ?? ""
        if !key.isEmpty && sent.contains("\"key\": \(text(.string(key)))") {
            return .init(content: [.text(text: "already sent (idempotency key \(key))", annotations: nil, _meta: nil)], isError: false)
        }
        append("{\"key\": \(text(.string(key))), \"to\": \(text(params.arguments?["to"])), \"body\": \(text(params.arguments?["body"]))}", to: outbox)
        return .init(content: [.text(text: "sent", annotations: nil, _meta: nil)], isError: false)
    default:
        return .init(content: [.text(text: "no tool named \(params.name)", annotations: nil, _meta: nil)], isError: true)
    }
}
try await server.start(transport: StdioTransport())
await server.waitUntilCompleted()
