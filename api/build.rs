fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc: no system protobuf compiler is needed on a fresh machine.
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    println!("cargo:rerun-if-changed=proto/ferry.proto");
    tonic_prost_build::configure().compile_protos(&["proto/ferry.proto"], &["proto"])?;
    Ok(())
}
