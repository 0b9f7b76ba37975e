// TokenMint readies the simulator's enrollment tokens (--enroll-token-dir DIR):
// each device that has no certificate yet (DIR/NAME.crt) needs DIR/NAME.token,
// its one-time EST token. With --mint-tokens PKI_DIR the missing ones are made
// here, as `fleet-gateway pki enroll-token PKI_DIR NAME` makes them (one per
// device, bound to its name, in PKI_DIR/enroll-tokens), and written 0600.
// Existing token files are kept, used or not: a second run with the same DIR
// (certificates removed) presents the same tokens, which the gateway refuses.
import CLibc
import AgentKit
import FleetAccess

enum TokenMint {
    struct Result: Equatable {
        /// Devices that already have a certificate (they dial with it).
        var certified = 0
        /// Token files found.
        var found = 0
        /// Tokens made now.
        var minted = 0
    }

    static func prepare(_ o: SimOptions, names: [String]) throws(SimError) -> Result {
        guard let dir = o.enrollTokenDirectory else { return Result() }
        if !AtomicFile.exists(dir) && mkdir(dir, 0o700) != 0 {
            throw SimError("cannot create the token directory " + dir + ": " + String(cString: strerror(rh_errno())))
        }
        guard access(dir, R_OK | W_OK | X_OK) == 0 else {
            throw SimError("the token directory " + dir + " must be readable and writable (the certificates are written there)")
        }
        var r = Result()
        let now = Int64(rh_wall_seconds())
        for name in names {
            let base = dir + "/" + name
            if AtomicFile.exists(base + ".crt") {
                r.certified += 1
            } else if AtomicFile.exists(base + ".token") {
                r.found += 1
            } else if let pki = o.mintTokensDirectory {
                var secret: String
                do throws(EnrollmentTokenError) {
                    secret = try EnrollmentTokens.create(directory: pki, binding: name, lifetime: o.mintTokenSeconds, now: now)
                } catch {
                    throw SimError("minting a token for " + name + " in " + pki + ": " + error.description)
                }
                defer { secret = "" }
                do throws(AtomicFile.Failure) {
                    try AtomicFile.write(base + ".token", Array((secret + "\n").utf8), mode: 0o600)
                } catch {
                    throw SimError(error.description)
                }
                r.minted += 1
            } else {
                throw SimError("no token " + base + ".token (make one with fleet-gateway pki enroll-token PKI_DIR " + name
                               + ", or let the simulator mint them: --mint-tokens PKI_DIR)")
            }
        }
        return r
    }
}
