// Throw-away certificates for engine tests, made with the openssl command line
// (the engine modules cannot depend on the gateway's PKI code).
import Foundation
import XCTest

struct TestPKI {
    let dir: String

    var caCert: String { dir + "/ca.crt" }
    func cert(_ name: String) -> String { dir + "/" + name + ".crt" }
    func key(_ name: String) -> String { dir + "/" + name + ".key" }

    /// A CA plus one leaf per name (SAN DNS:name, IP:127.0.0.1), in a fresh temp folder.
    static func make(leaves: [String], file: StaticString = #filePath, line: UInt = #line) throws -> TestPKI {
        let dir = NSTemporaryDirectory() + "rh-pki-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let pki = TestPKI(dir: dir)
        try run(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", dir + "/ca.key", "-out", dir + "/ca.crt", "-days", "2", "-subj", "/CN=Test CA",
                 "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign"])
        for name in leaves {
            try run(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                     "-keyout", pki.key(name), "-out", dir + "/" + name + ".csr", "-subj", "/CN=" + name])
            let ext = dir + "/" + name + ".ext"
            try ("subjectAltName=DNS:" + name + ",IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n")
                .write(toFile: ext, atomically: true, encoding: .utf8)
            try run(["x509", "-req", "-in", dir + "/" + name + ".csr", "-CA", pki.caCert, "-CAkey", dir + "/ca.key",
                     "-CAcreateserial", "-out", pki.cert(name), "-days", "2", "-extfile", ext])
        }
        return pki
    }

    private static func run(_ args: [String]) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        p.arguments = args
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else {
            throw NSError(domain: "openssl", code: Int(p.terminationStatus),
                          userInfo: [NSLocalizedDescriptionKey: "openssl " + args.joined(separator: " ")])
        }
    }
}
