import ArgumentParser
import Cairn
import CairnSpool
import Foundation
import CairnDaemon
import Subprocess
import SystemPackage

#if Agents
import CairnAgents

struct LLMHelper: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "llm",
        abstract: "(script helper) A recorded model call: on replay the recorded answer is printed and nothing is sent.",
        discussion: prose("""
            The prompt comes from --prompt FILE or stdin; a prompt file that cannot be read, or
            an empty prompt, is an error before anything is sent. Models are `provider:model`
            names from cairn.json's "llm" section; several --model options form a fallback
            chain. The answer streams to logs/NAME.stream.jsonl as it arrives (--no-stream
            asks for the whole answer at once).

            Exit status: 0 with the answer on stdout; 1 when every model failed (the failure
            is recorded, so a rerun of the script fails the same way without sending
            anything); 2 for a usage error (no --model, an unreadable or empty prompt).
            When the call must wait (a long Retry-After, or a token budget it would exceed),
            the script is stopped and run again from the top when the wait is over.

            Wrong answers: --schema FILE asks for JSON matching that JSON schema (OpenAI's
            response_format, Anthropic's forced tool) and rejects an answer that is not JSON.
            With --validate CMD, `sh -c CMD` runs with the answer on stdin, and a non-zero exit
            rejects it (the first line of its stderr, else stdout, is the reason). A rejected
            answer goes back to the model with the reason (--repairs times, default 2), then
            the next --model is asked; when every answer was rejected the call fails
            (llm_invalid_answer); --on-invalid accept takes the last answer, --on-invalid ask
            waits for a person at the gate answer-NAME. Only
            an accepted answer is recorded; a rerun neither sends nor validates.

            Examples (inside SPOOL/workflows/NAME):
              summary=$(cairn llm summarize --model openai:gpt-4o-mini --prompt t.txt)
              echo "Classify: $text" | cairn llm classify --json \\
                --model local:qwen --model openai:gpt-4o-mini
              cairn llm triage --model openai:gpt-4o-mini --schema triage.schema.json \\
                --validate 'jq -e ".priority | IN(\\"low\\", \\"high\\")" >/dev/null' < t.txt
            """)
    )

    @Argument(help: "The call's name (repeated names in loops are matched by position).") var name: String
    @Option(name: .long, help: "A model (provider:model); repeat for a fallback chain.") var model: [String] = []
    @Option(name: .long, help: "A system prompt.") var system: String?
    @Option(name: .long, help: ArgumentHelp("The prompt as a file, or - for stdin (default).", valueName: "file|-")) var prompt: String = "-"
    @Flag(name: .long, help: "Print the whole response as JSON (content, tool_calls, usage, model).") var json = false
    @Flag(name: .customLong("no-stream"), help: "Do not ask the provider to stream.") var noStream = false
    @Option(name: .customLong("token-budget"), help: ArgumentHelp("The run's token budget (input + output over all its calls); over it, the run waits at a gate (default: cairn.json \"llm\": {\"token_budget\": N}).", valueName: "n")) var tokenBudget: Int?

    @Option(name: .long, help: ArgumentHelp("A JSON schema the answer must match (structured output).", valueName: "file")) var schema: String?
    @Option(name: .customLong("validate"), help: ArgumentHelp("A shell command that gets the answer on stdin; a non-zero exit rejects it.", valueName: "cmd")) var validateCommand: String?
    @Option(name: .long, help: "Repairs per model of a rejected answer (0 to 10).") var repairs: Int = 2
    @Option(name: .customLong("validate-timeout"), help: "How long the validator may run (the call fails after it).") var validateTimeout = DurationArgument(argument: "60s")!
    @Option(name: .customLong("on-invalid"), help: ArgumentHelp("When every answer was rejected: fail, accept the last, or ask a person (the gate answer-NAME).", valueName: "fail|accept|ask")) var onInvalid: String = "fail"

    func validate() throws {
        guard !model.isEmpty else { throw ValidationError("at least one --model is needed") }
        if let tokenBudget, tokenBudget <= 0 { throw ValidationError("--token-budget must be positive") }
        guard (0...LLMOptions.maximumRepairs).contains(repairs) else { throw ValidationError("--repairs must be from 0 to \(LLMOptions.maximumRepairs)") }
        guard validateTimeout.duration > .zero else { throw ValidationError("--validate-timeout must be longer than zero") }
        guard ["fail", "accept", "ask"].contains(onInvalid) else { throw ValidationError("--on-invalid is fail, accept or ask, not '\(onInvalid)'") }
    }

    /// The schema file, read and parsed before anything is sent.
    func readSchema() throws -> ResponseSchema? {
        guard let schema else { return nil }
        do {
            let value = try JSONValue.parse(String(decoding: try DurableFile.read(FilePath(schema), limit: 1 << 20), as: UTF8.self))
            guard case .object = value else { throw CLIError(.usage, "\(schema): a JSON schema is an object; nothing was sent") }
            return ResponseSchema(name: "answer", schema: value)
        } catch let e as CLIError {
            throw e
        } catch {
            throw CLIError(.usage, "\(schema): cannot read the schema (\(JSONValue.describe(error))); nothing was sent")
        }
    }

    /// `sh -c CMD` with the answer on stdin: nil when it exits 0, else why it rejected it
    /// (the first line it wrote to stderr, else stdout). Its input and outputs are unlinked
    /// files, not pipes: a validator that reads none of the answer, or writes megabytes,
    /// changes nothing. One that cannot run (126, 127), dies of a signal or outlives
    /// `timeout` is no verdict on the answer: the call fails (`llm_validator_failed`).
    static func runValidator(_ command: String, answer: String, spool: Spool, run: String, timeout: Duration) async throws -> String? {
        let input = try ScriptWorkflow.inputFile(spool: spool, run: run, text: answer)
        let out = try ScriptWorkflow.inputFile(spool: spool, run: run, text: "")
        let err = try ScriptWorkflow.inputFile(spool: spool, run: run, text: "")
        defer {
            try? out.close()
            try? err.close()
        }
        let status: TerminationStatus? = try await withThrowingTaskGroup(of: TerminationStatus?.self) { group in
            group.addTask {
                try await Subprocess.run(.path("/bin/sh"), arguments: ["-c", command],
                                         input: .fileDescriptor(input, closeAfterSpawningProcess: true),
                                         output: .fileDescriptor(out, closeAfterSpawningProcess: false),
                                         error: .fileDescriptor(err, closeAfterSpawningProcess: false)).terminationStatus
            }
            group.addTask {
                try await Task.sleep(for: timeout)
                return nil
            }
            let first = try await group.next() ?? nil
            group.cancelAll()
            return first
        }
        func firstLine(_ fd: FileDescriptor) -> String? {
            var buf = [UInt8](repeating: 0, count: 4096)
            let n = buf.withUnsafeMutableBytes { (try? fd.read(fromAbsoluteOffset: 0, into: $0)) ?? 0 }
            let text = String(decoding: buf[0..<n], as: UTF8.self)
            return text.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.first { !$0.isEmpty }.map { String($0.prefix(500)) }
        }
        guard let status else {
            throw LLMError(.validatorFailed, "the validator did not finish within \(timeout) (--validate-timeout): \(command)")
        }
        switch status {
        case .exited(0):
            return nil
        case .exited(let code) where code == 126 || code == 127:
            throw LLMError(.validatorFailed, "the validator cannot run (exit \(code)): \(firstLine(err) ?? command)")
        case .exited(let code):
            return firstLine(err) ?? firstLine(out) ?? "rejected by the validator (exit \(code))"
        case .signaled(let sig):
            throw LLMError(.validatorFailed, "the validator was killed by signal \(sig): \(command)")
        }
    }

    /// The prompt, read before anything else happens: a missing or unreadable file, or an
    /// empty prompt, is a usage error and nothing is sent.
    func readPrompt() throws -> String {
        let data: Data
        if prompt == "-" {
            data = FileHandle.standardInput.readDataToEndOfFile()
        } else {
            do {
                data = try DurableFile.read(FilePath(prompt), limit: 64 << 20)
            } catch {
                throw CLIError(.usage, "\(prompt): cannot read the prompt file (\(error)); nothing was sent")
            }
        }
        let text = String(decoding: data, as: UTF8.self)
        guard !text.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty else {
            throw CLIError(.usage, "the prompt (\(prompt == "-" ? "stdin" : prompt)) is empty; nothing was sent")
        }
        return text
    }

    func run() async throws {
        let text = try readPrompt()
        var messages: [ChatMessage] = []
        if let system { messages.append(.system(system)) }
        messages.append(.user(text))
        var options = LLMOptions()
        options.stream = !noStream
        options.tokenBudget = tokenBudget
        options.responseSchema = try readSchema()
        options.repairs = repairs
        options.onInvalidAnswer = onInvalid == "accept" ? .accept : onInvalid == "ask" ? .askPerson : .fail
        let session = try HelperSession.open("llm")
        if let command = validateCommand {
            let spool = session.spool, run = session.run
            let limit = validateTimeout.duration
            options.validator = { response in try await Self.runValidator(command, answer: response.content, spool: spool, run: run, timeout: limit) }
        }
        let opts = options
        let response: LLMResponse
        do {
            response = try await session.perform { ctx in try await ctx.llm(name, models: model, messages: messages, options: opts) }
        } catch let e as StepFailedError {
            throw CLIError(.failure, e.description)
        }
        if json {
            Output.json(try JSONValue(encoding: response))
        } else {
            Output.line(response.content)
        }
    }
}
#else
/// `cairn llm` in a CairnCLI built without the Agents trait: it says so, and sends nothing.
struct LLMHelper: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "llm",
        abstract: "(script helper) A recorded model call — not in this build (the Agents trait is off).",
        shouldDisplay: false
    )
    @Argument(parsing: .allUnrecognized) var rest: [String] = []
    func run() throws {
        throw CLIError(.usage, "this cairn was built without the Agents trait, so it has no `cairn llm`: build it with the package's default traits")
    }
}
#endif

#if Agents
/// `cairn mcp-call`: one recorded call of an MCP server's tool from a script workflow.
struct MCPCallHelper: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mcp-call",
        abstract: "(script helper) A recorded call of an MCP server's tool: on replay the recorded result is printed and nothing is called.",
        discussion: prose("""
            SERVER is a name in cairn.json's "mcp_servers"; the arguments are a JSON object from
            --args FILE or - (stdin; default: {}). The call is a durable step named NAME, sent
            with the step's idempotency key in the request's _meta (cairn/idempotency_key).
            Exit status: 0 with the tool's text on stdout; 1 when the tool reported an error
            (its text on stderr; recorded, so a rerun exits 1 the same way), when a person
            rejected the call, or when the server failed on every attempt.

            Examples (inside SPOOL/workflows/NAME):
              customer=$(echo '{"email": "ann@example.com"}' | cairn mcp-call lookup helpdesk lookup_customer --args -)
              cairn mcp-call reply helpdesk send_reply --args reply.json --approval --at-most-once
            """)
    )

    @Argument(help: "The call's name (a step name).") var name: String
    @Argument(help: "The MCP server (a name in cairn.json's \"mcp_servers\").") var server: String
    @Argument(help: "The tool's name.") var tool: String
    @Option(name: .long, help: ArgumentHelp("The arguments: a JSON object as a file, or - for stdin (default: {}).", valueName: "file|-")) var args: String?
    @Flag(name: .long, help: "Ask a person first (the gate NAME; default: the server's needs_approval).") var approval = false
    @Flag(name: .customLong("at-most-once"), help: "An interrupted call is never re-sent: it stops at an uncertain gate (default: the server's at_most_once).") var atMostOnce = false
    @Flag(name: .long, help: "Print {\"content\", \"is_error\"} as JSON.") var json = false

    func validate() throws {
        guard Names.isValidName(name) else { throw ValidationError("invalid call name '\(name)' (letters, digits, '.', '_' and '-')") }
    }

    func run() async throws {
        var arguments: JSONValue = .object([:])
        if let args {
            arguments = try Output.readJSONArgument(args, what: "arguments")
            guard case .object = arguments else { throw CLIError(.usage, "--args must be a JSON object (the tool's arguments), not \(arguments.kindName); nothing was called") }
        }
        let session = try HelperSession.open("mcp-call")
        let call: MCPCallResult
        do {
            let (name, server, tool, args) = (self.name, self.server, self.tool, arguments)
            let approve: Bool? = approval ? true : nil, once: Bool? = atMostOnce ? true : nil
            call = try await session.perform { ctx in try await ctx.mcpCall(name, server: server, tool: tool, arguments: args, needsApproval: approve, atMostOnce: once) }
        } catch let e as StepFailedError {
            throw CLIError(.failure, e.description)
        } catch let e as MCPCallRejected {
            throw CLIError(.failure, "\(name): \(e.description)")
        } catch let e as MCPCallMismatch {
            throw CLIError(.failure, "mcp-call \(e.description)")
        }
        if json {
            Output.json(try JSONValue(encoding: call))
        } else if call.isError {
            throw CLIError(.failure, "\(tool): \(call.content)")
        } else {
            Output.write(call.content.hasSuffix("\n") ? call.content : call.content + "\n", untrusted: true)
        }
        if json && call.isError { throw ExitCode(1) }
    }
}
#else
struct MCPCallHelper: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "mcp-call", abstract: "(script helper) A recorded MCP tool call — not in this build (the Agents trait is off).", shouldDisplay: false)
    @Argument(parsing: .allUnrecognized) var rest: [String] = []
    func run() throws {
        throw CLIError(.usage, "this cairn was built without the Agents trait, so it has no `cairn mcp-call`: build it with the package's default traits")
    }
}
#endif
