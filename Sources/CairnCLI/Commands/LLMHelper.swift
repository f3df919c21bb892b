import ArgumentParser
import Cairn
import CairnAgents
import CairnSpool
import Foundation
import SystemPackage

struct LLMHelper: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "llm",
        abstract: "(script helper) A recorded model call: on replay the recorded answer is printed and nothing is sent.",
        discussion: """
            The prompt comes from --prompt FILE or stdin. Models are `provider:model` names from
            cairn.json's "llm" section; several --model options form a fallback chain. The
            answer streams to logs/NAME.stream.jsonl as it arrives.

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

    func validate() throws {
        guard !model.isEmpty else { throw ValidationError("at least one --model is needed") }
    }

    func run() async throws {
        let data = prompt == "-" ? FileHandle.standardInput.readDataToEndOfFile() : ((try? DurableFile.read(FilePath(prompt))) ?? Data())
        let text = String(decoding: data, as: UTF8.self)
        var messages: [ChatMessage] = []
        if let system { messages.append(.system(system)) }
        messages.append(.user(text))
        var session = try HelperSession.open("llm")
        let response: LLMResponse
        do {
            response = try await session.perform { ctx in try await ctx.llm(name, models: model, messages: messages) }
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
