#!/usr/bin/env bash
# bench/policy_decide.sh: how long AccessPolicy.decide takes (release, -O), for a
# 20-rule policy (three requests: a token matching the last rule with paths= and
# from=, a JWT matching rule 2, an anonymous request nothing matches) and for
# 10,000 rules. Compiles the policy sources alone (FleetPKI stubbed) with swiftc.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
src=Sources/FleetAccess
cp "$src/AccessPolicy.swift" "$src/PolicyRule.swift" "$src/PathCanonical.swift" "$src/Principal.swift" "$tmp/"
for f in AddressLiteral NamePattern; do sed 's/^import FleetPKI//' "$src/$f.swift" > "$tmp/$f.swift"; done
cat > "$tmp/PKIStub.swift" <<'SWIFT'
enum PKI { static func asciiLowercased(_ s: String) -> String { String(decoding: s.utf8.map { $0 >= 0x41 && $0 <= 0x5A ? $0 | 0x20 : $0 }, as: UTF8.self) } }
SWIFT
cp bench/policy_decide.swift "$tmp/main.swift"
"${SWIFTC:-swiftc}" -O -I Sources/CLibc "$tmp"/*.swift -o "$tmp/policy_decide"
"$tmp/policy_decide"
