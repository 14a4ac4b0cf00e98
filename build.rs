//! Compiles meshca's gRPC contracts with protox, a protobuf compiler written
//! in Rust, so that building meshca needs nothing but cargo: the SPIFFE
//! Workload API (the agent serves it) and Istio's certificate service (the
//! daemon serves it).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .build_client(false)
        .compile_fds(protox::compile(["spiffe/workload.proto"], ["proto"])?)?;
    // A request to the Istio service that does not parse is the caller's
    // mistake: its codec says INVALID_ARGUMENT where tonic's says INTERNAL.
    tonic_prost_build::configure()
        .build_client(false)
        .codec_path("crate::features::istio_ca::codec::StrictCodec")
        .compile_fds(protox::compile(["istio/ca.proto"], ["proto"])?)?;
    Ok(())
}
