//! Signing API benchmark (see README).
fn main() {}
