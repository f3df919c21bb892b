import AsyncHTTPClient
import CairnSpool
import Foundation
import SystemPackage

/// The providers a spool is configured with (cairn.json `"llm"`, at the top level of the
/// file), and how model names map to them. API keys come from an environment variable or
/// a key file, are read when their provider is used, and are never written to the spool
/// or the logs.
///
/// ```json
/// "llm": {
///   "providers": {
///     "openai":    {"type": "openai", "base_url": "https://api.openai.com/v1", "api_key_env": "OPENAI_API_KEY"},
///     "anthropic": {"type": "anthropic", "api_key_file": "/etc/cairn/anthropic.key", "timeout_seconds": 120, "connect_timeout_seconds": 5},
///     "local":     {"type": "openai", "base_url": "http://127.0.0.1:8080/v1", "stream": false},
///     "canned":    {"type": "scripted", "responses": [{"content": "Hello"}]}
///   },
///   "default_provider": "openai"
/// }
/// ```
/// A model is named `provider:model` (`anthropic:claude-sonnet-4-5`), or just `model`
/// for the default provider.
public struct LLMClient: Sendable {
    /// The providers by name.
    public var providers: [String: any LLMProvider]
    /// The provider of a model named without `provider:`.
    public var defaultProvider: String?

    /// A client over `providers`; the default provider is the first one unless named.
    public init(providers: [any LLMProvider], defaultProvider: String? = nil) {
        self.providers = Dictionary(providers.map { ($0.name, $0) }, uniquingKeysWith: { $1 })
        self.defaultProvider = defaultProvider ?? providers.first?.name
    }

    /// The provider and model name for `provider:model` or `model`.
    /// A model with no name (`""`, `fake:`, `:`) is a configuration error, sent nowhere: an
    /// outside attack found `fake:` sent to the provider as model `""`.
    public func resolve(_ ref: String) throws -> (any LLMProvider, String) {
        if let colon = ref.firstIndex(of: ":"), let p = providers[String(ref[..<colon])] {
            let model = String(ref[ref.index(after: colon)...])
            guard !model.isEmpty else { throw LLMError(.configuration, "model '\(ref)' names provider '\(p.name)' but no model") }
            return (p, model)
        }
        guard !ref.isEmpty, !ref.hasPrefix(":"), !ref.hasSuffix(":") else {
            throw LLMError(.configuration, "model '\(ref)' has an empty provider or model name (write provider:model, or model for the default provider)")
        }
        guard let d = defaultProvider, let p = providers[d] else {
            throw LLMError(.configuration, "no provider for model '\(ref)' (configure \"llm\" in cairn.json; known providers: \(providers.keys.sorted().joined(separator: ", ")))")
        }
        return (p, ref)
    }

    /// Every secret the providers would send (the keys that can be resolved now), for
    /// redaction.
    public func secrets() -> [String] { providers.values.flatMap { $0.secrets() } }

    /// Builds the client from cairn.json. Without an "llm" section, the only provider is
    /// `scripted` with no responses (every call fails with a configuration error). Nothing
    /// here fails for one provider: a provider whose key is missing, or whose configuration
    /// is wrong, fails when it is used, and the chain moves on.
    public static func from(config: SpoolConfig, environment: [String: String] = ProcessInfo.processInfo.environment) throws -> LLMClient {
        guard let llm = config.raw["llm"], case .object = llm else {
            return LLMClient(providers: [ScriptedProvider(name: "scripted", responses: [])])
        }
        var list: [any LLMProvider] = []
        for (name, p) in (llm["providers"]?.objectValue ?? [:]).sorted(by: { $0.key < $1.key }) {
            let type = p["type"]?.stringValue ?? "openai"
            let timeout = Duration.seconds(p["timeout_seconds"]?.doubleValue ?? 120)
            let connect = p["connect_timeout_seconds"]?.doubleValue.map { Duration.seconds($0) } ?? AgentHTTP.defaultConnectTimeout
            let stream = p["stream"]?.boolValue ?? true
            var key = APIKey.none
            if let env = p["api_key_env"]?.stringValue {
                key = .environment(env, in: environment)
            } else if let file = p["api_key_file"]?.stringValue {
                key = .file(file)
            }
            switch type {
            case "openai":
                list.append(OpenAICompatibleProvider(name: name, baseURL: p["base_url"]?.stringValue ?? "https://api.openai.com/v1", key: key, timeout: timeout, connectTimeout: connect, stream: stream))
            case "anthropic":
                list.append(AnthropicProvider(name: name, baseURL: p["base_url"]?.stringValue ?? "https://api.anthropic.com/v1", key: key, timeout: timeout, connectTimeout: connect, stream: stream))
            case "scripted":
                var responses = p["responses"]?.arrayValue ?? []
                if let file = p["file"]?.stringValue {
                    guard let d = try? DurableFile.read(FilePath(file), limit: 64 << 20), let j = try? JSONValue.parseRejectingDuplicateKeys(d) else {
                        list.append(MisconfiguredProvider(name: name, error: LLMError(.configuration, "provider '\(name)': cannot read canned responses from \(file)")))
                        continue
                    }
                    responses = j["responses"]?.arrayValue ?? j.arrayValue ?? []
                }
                list.append(ScriptedProvider(name: name, responses: responses))
            default:
                list.append(MisconfiguredProvider(name: name, error: LLMError(.configuration, "provider '\(name)': unknown type '\(type)' (openai, anthropic, scripted)")))
            }
        }
        return LLMClient(providers: list, defaultProvider: llm["default_provider"]?.stringValue)
    }
}
