#if hasFeature(Embedded)
/// Embedded Swift's hash tables size themselves with ceil(), the agent's only use
/// of libm. Defining it here keeps libm (about 400 KiB resident) off the board.
@_cdecl("ceil")
public func rh_ceil(_ x: Double) -> Double {
    // NaN, infinities and anything at or above 2^52 are already integral.
    if !(x.magnitude < 4_503_599_627_370_496.0) { return x }
    let t = Double(Int64(x))  // toward zero
    if t < x { return t + 1 }
    return t == 0 && x < 0 ? -0.0 : t
}
#endif
