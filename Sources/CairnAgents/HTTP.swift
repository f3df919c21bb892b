import AsyncHTTPClient
import Foundation

/// The one HTTP client the agent layer shares (AsyncHTTPClient on its own event loop group).
public enum AgentHTTP {
    public static let shared: HTTPClient = HTTPClient(eventLoopGroupProvider: .singleton)
}
