import Foundation
import Synchronization

/// `show` and `logs` through a pager on a terminal, as git does: `$CAIRN_PAGER`, else
/// `$PAGER`, else `less` (with `LESS=FRX` unless set: it quits when the text fits one screen,
/// passes colours, and leaves the text on the screen). Never when stdout is not a terminal,
/// with `--no-pager`, with an empty pager or `cat`, or when the pager cannot start (the
/// text is printed as it is).
enum Pager {
    private static let pid = Atomic<Int32>(0)

    static func start(disabled: Bool = false) {
        guard !disabled, isatty(STDOUT_FILENO) == 1 else { return }
        let env = ProcessInfo.processInfo.environment
        let command = (env["CAIRN_PAGER"] ?? env["PAGER"] ?? "less").trimmingCharacters(in: .whitespaces)
        guard !command.isEmpty, command != "cat" else { return }
        if command == "less" || command.hasPrefix("less ") {
            // `less` not installed: no pager (rather than sh's "not found").
            let path = (env["PATH"] ?? "/usr/bin:/bin").split(separator: ":")
            guard path.contains(where: { access("\($0)/less", X_OK) == 0 }) else { return }
        }
        // Colour is decided by stdout being a terminal: decided now, before stdout becomes
        // the pager's pipe (less -R shows it), as git colours what it pages.
        _ = Output.color
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { return }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, fds[0], 0)
        posix_spawn_file_actions_addclose(&actions, fds[0])
        posix_spawn_file_actions_addclose(&actions, fds[1])
        var environment = env
        if environment["LESS"] == nil { environment["LESS"] = "FRX" }
        let envp: [UnsafeMutablePointer<CChar>?] = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        let words: [String] = ["/bin/sh", "-c", command]
        let argv: [UnsafeMutablePointer<CChar>?] = words.map { strdup($0) } + [nil]
        defer { for p in envp + argv { free(p) } }
        var child: pid_t = 0
        guard posix_spawn(&child, "/bin/sh", &actions, nil, argv, envp) == 0 else {
            close(fds[0]); close(fds[1])
            return
        }
        close(fds[0])
        dup2(fds[1], STDOUT_FILENO)
        close(fds[1])
        pid.store(child, ordering: .sequentiallyConsistent)
        // A pager quit early (q): the rest of the text has nowhere to go; say nothing.
        signal(SIGPIPE, SIG_IGN)
        // Ctrl-C is the pager's (less keeps running); this process ends when it has written.
        signal(SIGINT, SIG_IGN)
        atexit { Pager.finish() }
    }

    /// Closes the pager's input and waits for it (the shell gets the terminal back after).
    static func finish() {
        let child = pid.exchange(0, ordering: .sequentiallyConsistent)
        guard child > 0 else { return }
        close(STDOUT_FILENO)
        var status: Int32 = 0
        while waitpid(child, &status, 0) < 0 && errno == EINTR {}
    }
}
