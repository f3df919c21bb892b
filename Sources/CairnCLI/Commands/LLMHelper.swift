import ArgumentParser
import Cairn
import CairnSpool
import Foundation
import SystemPackage

#if Agents
import CairnAgents

struct LLMHelper: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "llm",
        abstract: "(script helper) A recorded model call: on replay the recorded answer is printed and nothing is sent.",
        discussion: """
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

            Examples (inside SPOOL/workflows/NAME):
              summary=$(cairn llm summarize --model openai:gpt-4o-mini --prompt ticket.txt)
              echo "Classify: $text" | cairn llm classify --model local:qwen --model openai:gpt-4o-mini --json
            """
    )

    @Argument(help: "The call's name (repeated names in loops are matched by position).") var name: String
    @Option(name: .long, help: "A model (provider:model); repeat for a fallback chain.") var model: [String] = []
    @Option(name: .long, help: "A system prompt.") var system: String?
    @Option(name: .long, help: ArgumentHelp("The prompt as a file, or - for stdin (default).", valueName: "file|-")) var prompt: String = "-"
    @Flag(name: .long, help: "Print the whole response as JSON (content, tool_calls, usage, model).") var json = false
    @Flag(name: .customLong("no-stream"), help: "Do not ask the provider to stream.") var noStream = false
    @Option(name: .customLong("token-budget"), help: ArgumentHelp("The run's token budget (input + output over all its calls); over it, the run waits at a gate (default: cairn.json \"llm\": {\"token_budget\": N}).", valueName: "n")) var tokenBudget: Int?

    func validate() throws {
        guard !model.isEmpty else { throw ValidationError("at least one --model is needed") }
        if let tokenBudget, tokenBudget <= 0 { throw ValidationError("--token-budget must be positive") }
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
        let opts = options
        let session = try HelperSession.open("llm")
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
