//! The `meshca` binary; everything it does is in the library's `cli`
//! module.

fn main() -> std::process::ExitCode {
    meshca::main()
}
