import Foundation

/// Every error the spool layer raises: a code that callers can switch on, the file at
/// fault when there is one, the errno when a syscall failed, and a sentence for people.
public struct SpoolError: Error, Sendable, CustomStringConvertible, Equatable {
    /// An extensible error code (a struct, so new codes do not break exhaustive switches).
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        /// The code as written in errors and `--json` output.
        public let rawValue: String
        /// A code named `rawValue`.
        public init(_ rawValue: String) { self.rawValue = rawValue }
        /// The code's name.
        public var description: String { rawValue }

        /// A syscall failed (open, write, fsync, rename…); `errno` says which error.
        public static let io = Code("io")
        /// A file that must not be replaced already exists (first writer won).
        public static let exists = Code("exists")
        /// A file or run that should exist does not.
        public static let notFound = Code("not_found")
        /// A file's content is not what the format says (bad JSON, missing field).
        public static let malformed = Code("malformed")
        /// Not a spool, or a spool of another format version.
        public static let notASpool = Code("not_a_spool")
        /// A value is out of range or of the wrong shape (run id, name, duration).
        public static let invalid = Code("invalid")
        /// Another process holds the run's lock.
        public static let locked = Code("locked")
        /// A file exceeds the configured size limit.
        public static let tooLarge = Code("too_large")
    }

    /// What kind of failure.
    public var code: Code
    /// The file concerned, when there is one.
    public var path: String?
    /// The system error number, for I/O failures.
    public var errno: Int32?
    /// What went wrong, for people.
    public var message: String

    /// An error of `code` about `path`.
    public init(_ code: Code, path: String? = nil, errno: Int32? = nil, _ message: String) {
        self.code = code
        self.path = path
        self.errno = errno
        self.message = message
    }

    /// The message, with the path and the system error when known.
    public var description: String {
        var s = path.map { "\($0): " } ?? ""
        s += message
        if let e = errno { s += " (\(String(cString: strerror(e))))" }
        return s
    }
}
