// UploadWindow: how much request body a user's HTTP/2 stream may have in the
// gateway. A stream's receive window is the most the user can send that no device
// has taken yet, so the window is the bound: it starts small, reopens only as the
// device takes the bytes (PublicStream.release), and doubles, up to `maximum`,
// while the device takes them as fast as the user sends (a big upload to a device
// that keeps up still goes fast, as HAProxy and nghttp2 grow theirs). Growth stops
// at the connection's budget and at the gateway's: a user's connection with
// `public_max_streams` uploads to a device that reads nothing holds at most
// max(connectionBudget, streams × initial) bytes, grown windows all together at
// most globalGrowthBudget, and the windows of every upload of every user together
// at most `upload_budget_bytes` (256 MiB): past it a new upload gets 503 with
// Retry-After, so what all users can park in the gateway is bounded, not only per
// connection.
enum UploadWindow {
    /// SETTINGS_INITIAL_WINDOW_SIZE of users' connections.
    static let initial = 64 << 10
    static let maximum = 1 << 20
    /// The windows of one connection's streams together, beyond which none grows
    /// (also the connection's window: it never stalls streams within their own windows).
    static let connectionBudget = 4 << 20
    /// Growth beyond `initial`, summed over every user connection.
    static let globalGrowthBudget = 64 << 20
}
