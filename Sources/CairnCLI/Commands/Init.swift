import ArgumentParser
import CairnSpool
import Foundation

struct InitCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "init",
        abstract: "Create a spool (an existing one is left as it is).",
        discussion: prose("""
            Examples:
              cairn init                 # ./spool (or $CAIRN_SPOOL)
              cairn init /srv/cairn      # a spool for a service
            """)
    )

    @Argument(help: "The spool directory (default: --spool, $CAIRN_SPOOL, ./spool).")
    var directory: String?

    @OptionGroup var options: SpoolOptions

    func run() throws {
        let root = directory.map { FilePath($0) } ?? Spool.resolveRoot(options.spool)
        let existed = DurableFile.exists(root.appending("cairn.json"))
        let spool = try Spool.create(at: root)
        Output.line(existed ? "spool \(spool.root.string) already exists" : "created spool \(spool.root.string)")
    }
}

import SystemPackage
