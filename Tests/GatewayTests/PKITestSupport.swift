// Helpers shared by the PKI tests.
import COpenSSL
import Foundation
@testable import FleetPKI
import XCTest

extension XCTestCase {
    func makeTempDir() throws -> String {
        let base = FileManager.default.temporaryDirectory.path + "/pki-test-XXXXXX"
        var template = Array(base.utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw NSError(domain: "mkdtemp", code: Int(errno))
        }
        let path = String(cString: made)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
        return path
    }

    func mode(_ path: String) -> mode_t {
        var st = stat()
        XCTAssertEqual(stat(path, &st), 0, "stat \(path)")
        return st.st_mode & 0o7777
    }

    func text(_ path: String) -> String {
        (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
    }

    /// Loads the first PEM certificate of `path`; the caller frees it.
    func loadCert(_ path: String, file: StaticString = #filePath, line: UInt = #line) -> OpaquePointer? {
        guard let bio = BIO_new_file(path, "r") else {
            XCTFail("cannot open \(path)", file: file, line: line)
            return nil
        }
        defer { BIO_free(bio) }
        let cert = PEM_read_bio_X509(bio, nil, nil, nil)
        XCTAssertNotNil(cert, "no certificate in \(path)", file: file, line: line)
        return cert
    }

    var opensslCLI: String? {
        FileManager.default.isExecutableFile(atPath: "/usr/bin/openssl") ? "/usr/bin/openssl" : nil
    }

    /// Runs the openssl CLI; returns its exit status and combined output.
    func runOpenSSL(_ arguments: [String]) throws -> (Int32, String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    /// The PKIError `body` throws, or a failure naming `expected` when it throws nothing.
    func assertThrows(_ expected: String, file: StaticString = #filePath, line: UInt = #line,
                      _ body: () throws(PKIError) -> Void) -> PKIError? {
        do {
            try body()
            XCTFail("expected \(expected), nothing thrown", file: file, line: line)
            return nil
        } catch {
            return error
        }
    }
}
