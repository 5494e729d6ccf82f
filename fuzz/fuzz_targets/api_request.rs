//! The API server's request decoding before the store: JSON bodies (size-limited), kind lookup,
//! strict decode, defaults, validation, server-owned metadata, merge patches, the stored-form
//! round trip, and list/watch selectors matched against the objects. Must never panic.
//!
//! Input layout (so seeds can be written by hand): one op byte, then fields separated by 0xFF
//! (a byte that never occurs in UTF-8, so JSON and selector text stay readable):
//!
//! `op` `kind` 0xFF `namespace` 0xFF `name` 0xFF `labelSelector` 0xFF `fieldSelector`
//!   0xFF `resourceVersion` 0xFF `stored object JSON` 0xFF `request body JSON`
//!
//! The body is the last field and may itself contain anything. Missing fields are empty.
//! `op % 4`: 0 create, 1 update, 2 patch, 3 list/watch only; bit 2 selects the status
//! subresource.
#![no_main]

use ferry_control::apiserver::objects::Subresource;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&op, rest)) = data.split_first() else {
        return;
    };
    let fields: Vec<&[u8]> = rest.splitn(8, |&b| b == 0xFF).collect();
    let field = |i: usize| fields.get(i).copied().unwrap_or(&[]);
    let text = |i: usize| String::from_utf8_lossy(field(i)).into_owned();
    let (kind, namespace, name) = (text(0), text(1), text(2));
    let (label_selector, field_selector, resource_version) = (text(3), text(4), text(5));
    let stored = field(6);
    // The body stays raw bytes: the server parses request bytes, not strings.
    let body = field(7);
    let sub = if op & 4 != 0 {
        Subresource::Status
    } else {
        Subresource::Main
    };

    let old = ferry_fuzz::stored_object(stored, 7);
    let result = match op % 4 {
        0 => ferry_fuzz::create(&kind, &namespace, body),
        1 => ferry_fuzz::update(&kind, body, old.as_ref(), sub),
        2 => ferry_fuzz::patch(&kind, &namespace, &name, body, old.as_ref(), sub),
        _ => None,
    };
    ferry_fuzz::debug(|| {
        format!(
            "op {} kind {kind:?}: stored object {}, result {}",
            op % 4,
            old.is_some(),
            result.is_some()
        )
    });

    if let Some(sel) = ferry_fuzz::list_or_watch(
        &kind,
        &namespace,
        &label_selector,
        &field_selector,
        &resource_version,
    ) {
        for obj in [result.as_ref(), old.as_ref()].into_iter().flatten() {
            let m = sel.matches(obj);
            ferry_fuzz::debug(|| format!("selectors parsed; match {m}"));
        }
        // List and watch match whatever JSON the store holds.
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
            let _ = sel.matches(&v);
        }
    }
});
