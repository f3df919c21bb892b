import Crypto

/// The one hash of the spool format: SHA-256 (swift-crypto's), in lower-case hex. It names
/// content-addressed blobs (`blobs/sha256-HEX`), idempotency-key files (`keys/HEX`) and
/// child run ids.
public enum ContentHash {
    /// The SHA-256 of `bytes`, as 64 lowercase hex digits.
    public static func sha256Hex<S: Sequence>(_ bytes: S) -> String where S.Element == UInt8 {
        let digest = Crypto.SHA256.hash(data: Array(bytes))
        return digest.map { byte in
            let s = String(byte, radix: 16)
            return byte < 16 ? "0" + s : s
        }.joined()
    }
}
