//! Compiles `proto/**/*.proto` with protox (pure Rust, no system `protoc`) and generates the
//! prost messages and tonic client/server with tonic-prost-build.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/herald/membership/v1/membership.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
