//! The datapath subsystem's one error type. Variants carry what was being done to which
//! program, map or interface, so a log line is enough to act on.

use aya::{EbpfError, maps::MapError, programs::ProgramError};

use super::Direction;

/// aya's errors are large; they are boxed so `Result<_, DatapathError>` stays small.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(
        "the eBPF object was not built (AYA_BUILD_SKIP was set); rebuild ferry-agent without it"
    )]
    ObjectNotBuilt,

    #[error("loading the eBPF object into the kernel")]
    Load(#[source] Box<EbpfError>),

    #[error("program `{program}` is missing from the eBPF object")]
    MissingProgram { program: &'static str },

    #[error("map `{map}` is missing from the eBPF object")]
    MissingMap { map: &'static str },

    #[error("program `{program}`: {op}")]
    Program {
        program: &'static str,
        op: &'static str,
        #[source]
        source: Box<ProgramError>,
    },

    #[error("attaching `{program}` to {ifname} ({direction:?}) (TCX needs kernel >= 6.6)")]
    Attach {
        program: &'static str,
        ifname: String,
        direction: Direction,
        #[source]
        source: Box<ProgramError>,
    },

    #[error("detaching `{program}` from {ifname}")]
    Detach {
        program: &'static str,
        ifname: String,
        #[source]
        source: Box<ProgramError>,
    },

    #[error("map `{map}`: {op}")]
    Map {
        map: &'static str,
        op: String,
        #[source]
        source: Box<MapError>,
    },

    #[error("{op} {}", path.display())]
    Io {
        op: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("pinning `{what}` at {}: {message}", path.display())]
    Pin {
        what: &'static str,
        path: std::path::PathBuf,
        message: String,
    },
}

impl DatapathError {
    pub(crate) fn io(op: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        DatapathError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn program(program: &'static str, op: &'static str, e: ProgramError) -> Self {
        DatapathError::Program {
            program,
            op,
            source: Box::new(e),
        }
    }

    pub(crate) fn map(map: &'static str, op: &str, e: MapError) -> Self {
        DatapathError::Map {
            map,
            op: op.to_owned(),
            source: Box::new(e),
        }
    }

    pub(crate) fn pin(what: &'static str, path: &std::path::Path, message: String) -> Self {
        DatapathError::Pin {
            what,
            path: path.to_path_buf(),
            message,
        }
    }
}
