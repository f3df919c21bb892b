@testable import CairnDaemon
import Testing

/// The daemon's own writes in the directories it watches for people's drops are no events
/// (Daemon.ownWrites, applied on the watcher thread); people's drops still are.
struct OwnWritesTests {
    let own = Daemon.ownWrites(runs: "/s/runs")

    @Test func theRuntimesFilesInARunDirectoryAreIgnored() {
        for name in ["state.json", "result.json", "run.json"] { #expect(own("/s/runs/R1", name), "\(name)") }
        #expect(own("/s/runs/R1/approvals", "go.request.json"))
    }

    @Test func peoplesDropsAndNewRunsAreNot() {
        for name in ["cancel", "pause", "retry"] { #expect(!own("/s/runs/R1", name), "\(name)") }
        #expect(!own("/s/runs/R1/approvals", "go.approved"))
        #expect(!own("/s/runs/R1/approvals", "go.rejected"))
        #expect(!own("/s/runs/R1/events", "label.json"))
        #expect(!own("/s/runs/R1/events", "_child.R2.json"))
        #expect(!own("/s/runs", "R2"))
        #expect(!own("/s/inbox", "state.json"))
        #expect(!own("/s/runs-other/R1", "state.json"))
    }
}
