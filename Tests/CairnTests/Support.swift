import Cairn
import CairnSpool
import CairnTesting
import Foundation
import Synchronization

/// Counts how often each named side effect ran.
final class Effects: Sendable {
    private let counts = Mutex<[String: Int]>([:])
    private let log = Mutex<[String]>([])

    func hit(_ name: String) {
        counts.withLock { $0[name, default: 0] += 1 }
        log.withLock { $0.append(name) }
    }

    func count(_ name: String) -> Int { counts.withLock { $0[name] ?? 0 } }
    var order: [String] { log.withLock { $0 } }
}

struct Flaky: Error, CustomStringConvertible {
    var description: String { "flaky failure" }
}

func workflow(_ name: String, _ body: @escaping @Sendable (WorkflowContext, JSONValue) async throws -> JSONValue) -> AnyWorkflow {
    AnyWorkflow(name: name, body)
}
