// Helpers shared by the PKI tests.
import Foundation
@testable import FleetGateway
import XCTest

extension XCTestCase {
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
