// swift-tools-version:6.0
//
// One package, three programs. The engine modules (EventLoop, TLS, HTTPCore, HTTP1, HTTP2,
// Wire, ConfigFormat, AgentKit) compile as Embedded Swift, like the agent.
//
//   swift build                      ordinary Swift, every product, tests
//   AGENT_EMBEDDED=1 swift build -c release --product device-agent \
//       --scratch-path .build-embedded   the firmware-style agent (Embedded Swift)
import PackageDescription

let embedded = Context.environment["AGENT_EMBEDDED"] != nil
let toolchain = Context.environment["SWIFT_TOOLCHAIN"] ?? "/opt/swift"

let engineSettings: [SwiftSetting] = embedded
    ? [.enableExperimentalFeature("Embedded"), .unsafeFlags(["-wmo", "-Osize", "-Xfrontend", "-function-sections"])]
    : []

let agentLinker: [LinkerSetting] = embedded
    ? [.unsafeFlags(["-enable-experimental-feature", "Embedded",
                     "-L\(toolchain)/usr/lib/swift/embedded/x86_64-unknown-linux-gnu",
                     "-use-ld=lld", "-Xlinker", "--gc-sections", "-Xlinker", "--icf=all"]),
       // No swiftUnicodeDataTables: EmbeddedRuntime/UnicodeDataShim.swift stands in for it.
       .linkedLibrary("ssl"), .linkedLibrary("crypto"),
       .linkedLibrary("nghttp2")]
    : []

// fleet-connect (Embedded like the agent): the same flags; --as-needed drops
// libnghttp2, which the engine modules name but this program never calls.
let connectLinker: [LinkerSetting] = embedded
    ? [.unsafeFlags(["-enable-experimental-feature", "Embedded",
                     "-L\(toolchain)/usr/lib/swift/embedded/x86_64-unknown-linux-gnu",
                     "-use-ld=lld", "-Xlinker", "--gc-sections", "-Xlinker", "--icf=all",
                     "-Xlinker", "--as-needed"]),
       .linkedLibrary("ssl"), .linkedLibrary("crypto")]
    : []

let package = Package(
    name: "ReverseHTTP",
    products: [
        .executable(name: "device-agent", targets: ["DeviceAgent"]),
        .executable(name: "fleet-gateway", targets: ["FleetGateway"]),
        .executable(name: "device-sim", targets: ["DeviceSim"]),
        .executable(name: "fleet-connect", targets: ["FleetConnect"]),
        .library(name: "DeviceSimKit", targets: ["DeviceSimKit"]),
    ],
    targets: [
        // Leaf modules: one per C library, a module map and a small shim header.
        .systemLibrary(name: "CLibc", path: "Sources/CLibc"),
        .systemLibrary(name: "COpenSSL", path: "Sources/COpenSSL"),
        .systemLibrary(name: "CNghttp2", path: "Sources/CNghttp2"),

        // The engine: protocol engines do no I/O (only EventLoop and Wire's Transport touch
        // file descriptors); no Foundation; Embedded-compatible.
        // Owned byte buffers (ByteQueue: output waiting for a socket, appended with memcpy).
        .target(name: "Bytes", dependencies: ["CLibc"], swiftSettings: engineSettings),
        .target(name: "EventLoop", dependencies: ["CLibc"], swiftSettings: engineSettings),
        .target(name: "TLS", dependencies: ["CLibc", "COpenSSL", "Bytes"], swiftSettings: engineSettings),
        // What every HTTP version shares: HTTPHeaders, the message heads, methods, the
        // HTTP/1.1 <-> HTTP/2 translation, the short answers programs make up.
        .target(name: "HTTPCore", dependencies: [], swiftSettings: engineSettings),
        .target(name: "HTTP1", dependencies: ["HTTPCore"], swiftSettings: engineSettings),
        .target(name: "HTTP2", dependencies: ["Bytes", "CLibc", "CNghttp2", "HTTPCore"], swiftSettings: engineSettings),
        // The connection plumbing both sides use: Transport, HTTP2Connection, Liveness, back-pressure.
        .target(name: "Wire", dependencies: ["CLibc", "Bytes", "EventLoop", "TLS", "HTTP1", "HTTP2"], swiftSettings: engineSettings),
        // The configuration format and command line shared by all programs, and the version.
        .target(name: "ConfigFormat", dependencies: ["CLibc", "EventLoop", "TLS"], swiftSettings: engineSettings),
        // The agent engine: dialers, the reversed HTTP/2 server, the local HTTP/1.1 client.
        .target(name: "AgentKit", dependencies: ["CLibc", "EventLoop", "TLS", "HTTP1", "HTTP2", "Wire", "ConfigFormat"],
                swiftSettings: engineSettings),

        // What the Embedded programs define instead of linking it (Unicode tables, libm's
        // ceil); empty in ordinary Swift.
        .target(name: "EmbeddedRuntime", dependencies: [], swiftSettings: engineSettings),
        .executableTarget(name: "DeviceAgent", dependencies: ["AgentKit", "Wire", "ConfigFormat", "EmbeddedRuntime"],
                          swiftSettings: engineSettings, linkerSettings: agentLinker),
        // The client for ssh's ProxyCommand: CONNECT through the gateway, stdin/stdout
        // bridged (issue 14). Embedded-compatible and built like the agent (small, arm64).
        .target(name: "FleetConnectKit", dependencies: ["CLibc", "Bytes", "EventLoop", "TLS", "Wire"],
                swiftSettings: engineSettings),
        .executableTarget(name: "FleetConnect", dependencies: ["FleetConnectKit", "ConfigFormat", "EventLoop", "CLibc", "EmbeddedRuntime"],
                          swiftSettings: engineSettings, linkerSettings: connectLinker),
        // The fleet's certificates (full Swift): `fleet-gateway pki`, and the simulator's devices.
        .target(name: "FleetPKI", dependencies: ["TLS", "COpenSSL"]),
        // Who may reach which device (full Swift, no I/O of its own): principals, tokens,
        // JWTs, the access policy. The gateway's; a library so that tests and fuzzers use it.
        .target(name: "FleetAccess", dependencies: ["Bytes", "TLS", "COpenSSL", "CLibc", "FleetPKI"]),
        // The gateway (full Swift): everything but main.swift, so that tests and fuzzers use it as a library.
        .target(name: "FleetGatewayKit", dependencies: ["Wire", "ConfigFormat", "TLS", "HTTPCore", "HTTP1", "HTTP2", "EventLoop", "COpenSSL", "FleetPKI", "FleetAccess"]),
        .executableTarget(name: "FleetGateway", dependencies: ["FleetGatewayKit", "CLibc"]),

        // The simulator (full Swift): virtual devices on the real agent engine.
        .target(name: "DeviceSimKit", dependencies: ["AgentKit", "Wire", "ConfigFormat", "TLS", "HTTP1", "EventLoop", "FleetPKI", "FleetAccess"]),
        .executableTarget(name: "DeviceSim", dependencies: ["DeviceSimKit", "AgentKit", "ConfigFormat", "EventLoop", "CLibc"]),

        .testTarget(name: "EngineTests", dependencies: ["Bytes", "EventLoop", "TLS", "HTTPCore", "HTTP1", "HTTP2", "Wire", "ConfigFormat", "AgentKit"]),
        .testTarget(name: "GatewayTests", dependencies: ["Bytes", "FleetGatewayKit", "Wire", "ConfigFormat", "FleetPKI", "FleetAccess", "COpenSSL", "TLS", "AccessTestSupport"]),
        .testTarget(name: "AccessTests", dependencies: ["Bytes", "FleetAccess", "FleetPKI", "COpenSSL", "TLS", "AccessTestSupport"]),
        .target(name: "AccessTestSupport", dependencies: ["Bytes", "FleetAccess", "COpenSSL"], path: "Tests/AccessTestSupport"),
        .testTarget(name: "ConnectTests", dependencies: ["FleetConnectKit"]),
        .testTarget(name: "SimTests", dependencies: ["DeviceSimKit", "FleetGatewayKit", "FleetPKI", "AgentKit", "Wire", "ConfigFormat", "HTTP1", "EventLoop"]),
    ]
)

// Fuzz targets (scripts/fuzz, fuzz/README.md): only when RH_FUZZ is set, so that
// `swift build`, `swift test`, the Embedded agent and the packages never see them.
//   RH_FUZZ=1 swift build -c release -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library -Xswiftc -enable-testing \
//       --scratch-path .build-fuzz --product fuzz-http1
// The gateway fuzz targets use FleetGatewayKit's internal types through
// `@testable import` (scripts/fuzz builds with -enable-testing).
if Context.environment["RH_FUZZ"] != nil {
    package.targets += [
        .executableTarget(name: "fuzz-http1", dependencies: ["HTTP1"], path: "fuzz/targets/http1"),
        .executableTarget(name: "fuzz-http2", dependencies: ["HTTP2", "HTTP1"], path: "fuzz/targets/http2"),
        .executableTarget(name: "fuzz-host-mapping", dependencies: ["FleetGatewayKit", "FleetPKI", "FleetAccess"], path: "fuzz/targets/host-mapping"),
        .executableTarget(name: "fuzz-config", dependencies: ["FleetGatewayKit", "AgentKit", "ConfigFormat", "Wire", "FleetPKI", "FleetAccess", "TLS", "EventLoop"],
                          path: "fuzz/targets/config"),
        .executableTarget(name: "fuzz-jwt", dependencies: ["FleetAccess", "COpenSSL"], path: "fuzz/targets/jwt"),
        .executableTarget(name: "fuzz-tokens", dependencies: ["Bytes", "FleetAccess", "TLS"], path: "fuzz/targets/tokens"),
        .executableTarget(name: "fuzz-policy", dependencies: ["FleetAccess"], path: "fuzz/targets/policy"),
        .executableTarget(name: "fuzz-est", dependencies: ["Bytes", "FleetPKI", "TLS", "COpenSSL"], path: "fuzz/targets/est"),
    ]
}
