//! Builds the `ferry-ebpf` BPF object with aya-build (nightly, `-Z build-std=core`,
//! bpf-linker from PATH) into `$OUT_DIR/ferry-ebpf`, which `datapath` embeds.
//!
//! `AYA_BUILD_SKIP=1` skips the BPF build (e.g. for a quick `cargo check` without the nightly
//! toolchain or bpf-linker); an empty object is written instead and loading it fails at run
//! time with `DatapathError::ObjectNotBuilt`.

use std::{env, fs, path::PathBuf};

use aya_build::{Package, Toolchain};

fn main() -> aya_build::Result<()> {
    println!("cargo:rerun-if-changed=build.rs");
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir.join("../ebpf/ferry-ebpf");
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| std::io::Error::other("non-UTF-8 path to ebpf/ferry-ebpf"))?;
    aya_build::build_ebpf(
        [Package {
            name: "ferry-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )?;

    let object = PathBuf::from(env::var("OUT_DIR")?).join("ferry-ebpf");
    if !object.exists() {
        println!("cargo:warning=BPF object not built (AYA_BUILD_SKIP); the datapath cannot load");
        fs::write(&object, b"")?;
    }
    Ok(())
}
