//! Empty on purpose: this library target exists so that `ferry-agent` can list `ferry-ebpf` as
//! a (path-only) build-dependency, which makes cargo rerun the agent's build script, and so
//! rebuild the BPF object, whenever this crate or `ferry-ebpf-common` changes. The programs
//! live in the `ferry-ebpf` binary target (`src/main.rs`).
#![no_std]
