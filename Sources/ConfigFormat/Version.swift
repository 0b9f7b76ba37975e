/// The version of all three programs.
public let reverseHTTPVersion = "0.1.0"
