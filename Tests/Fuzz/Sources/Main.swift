import Foundation

#if CAIRN_FUZZ
import CFuzzDriver
#endif

// Two builds of one executable. Under libFuzzer (`make fuzz`: -sanitize=fuzzer,address and
// -DCAIRN_FUZZ) it hands its arguments to libFuzzer's driver, with the target chosen by
// CAIRN_FUZZ_TARGET. In the ordinary debug build it replays files through a target:
// `cairn-fuzz TARGET FILE|DIRECTORY...` (exit 0 when every invariant held).

#if CAIRN_FUZZ
nonisolated(unsafe) private var selected: FuzzTarget = .drop

/// libFuzzer's entry: one input through the selected target.
@_cdecl("LLVMFuzzerTestOneInput")
public func cairnFuzzTestOneInput(_ bytes: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    selected.run(size == 0 ? Data() : Data(bytes: bytes!, count: size))
    return 0
}
#endif

@main struct FuzzMain {
    static func main() {
        #if CAIRN_FUZZ
        guard let name = ProcessInfo.processInfo.environment["CAIRN_FUZZ_TARGET"], let t = FuzzTarget(rawValue: name) else {
            FileHandle.standardError.write(Data("set CAIRN_FUZZ_TARGET to one of: \(FuzzTarget.allCases.map(\.rawValue).joined(separator: ", "))\n".utf8))
            exit(2)
        }
        selected = t
        var argc = CommandLine.argc
        var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
        exit(LLVMFuzzerRunDriver(&argc, &argv) { bytes, size in cairnFuzzTestOneInput(bytes, size) })
        #else
        replay()
        #endif
    }

    static func replay() {
        let args = CommandLine.arguments.dropFirst()
        guard let name = args.first, let target = FuzzTarget(rawValue: name) else {
            FileHandle.standardError.write(Data("usage: cairn-fuzz TARGET FILE|DIRECTORY... (targets: \(FuzzTarget.allCases.map(\.rawValue).joined(separator: ", ")))\n".utf8))
            exit(2)
        }
        var count = 0
        for arg in args.dropFirst() {
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: arg, isDirectory: &isDir) else {
                FileHandle.standardError.write(Data("no such file: \(arg)\n".utf8))
                exit(2)
            }
            let files = isDir.boolValue ? ((try? FileManager.default.contentsOfDirectory(atPath: arg)) ?? []).sorted().map { arg + "/" + $0 } : [arg]
            for f in files {
                guard let data = FileManager.default.contents(atPath: f) else { continue }
                target.run(data)
                count += 1
            }
        }
        print("cairn-fuzz \(name): \(count) inputs, every invariant held")
    }
}
