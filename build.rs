//! Compiles meshca's gRPC contracts with protox, a protobuf compiler written
//! in Rust, so that building meshca needs nothing but cargo: the SPIFFE
//! Workload API (the agent serves it) and Istio's certificate service (the
//! daemon serves it).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(["spiffe/workload.proto", "istio/ca.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .compile_fds(descriptors)?;
    Ok(())
}
