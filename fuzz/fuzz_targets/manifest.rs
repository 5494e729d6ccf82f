//! Manifest text (YAML or JSON, multi-document, Lists) through parse, strict decode, defaulting
//! and validation. Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The CLI reads files as UTF-8; anything else is rejected before parsing.
    if let Ok(text) = std::str::from_utf8(data) {
        ferry_fuzz::manifest(text);
    }
});
