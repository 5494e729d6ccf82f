//! Raw gRPC message bytes decoded as the `ferry_api::proto` request messages (as tonic does
//! before calling a handler), then fed through the same request pipeline as `api_request`.
//! The first byte picks the message type. Must never panic.
#![no_main]

use ferry_api::proto::{
    CreateRequest, DeleteRequest, GetRequest, ListRequest, PatchRequest, UpdateRequest,
    WatchRequest,
};
use ferry_control::apiserver::objects::Subresource;
use libfuzzer_sys::fuzz_target;
use prost::Message;

/// The server's `subresource()` check.
fn subresource(s: &str) -> Option<Subresource> {
    match s {
        "" => Some(Subresource::Main),
        "status" => Some(Subresource::Status),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, msg)) = data.split_first() else {
        return;
    };
    // A fixed stored object for update/patch to land on.
    let old = ferry_fuzz::stored_object(
        br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a","namespace":"default","uid":"u","generation":1},"data":{"k":"v"}}"#,
        5,
    );
    match which % 7 {
        0 => {
            if let Ok(r) = CreateRequest::decode(msg) {
                let _ = ferry_fuzz::create(&r.kind, &r.namespace, &r.object);
                let _ = r.encode_to_vec();
            }
        }
        1 => {
            if let Ok(r) = UpdateRequest::decode(msg)
                && let Some(sub) = subresource(&r.subresource)
            {
                let _ = ferry_fuzz::update(&r.kind, &r.object, old.as_ref(), sub);
            }
        }
        2 => {
            if let Ok(r) = PatchRequest::decode(msg)
                && let Some(sub) = subresource(&r.subresource)
            {
                let _ =
                    ferry_fuzz::patch(&r.kind, &r.namespace, &r.name, &r.patch, old.as_ref(), sub);
            }
        }
        3 => {
            if let Ok(r) = ListRequest::decode(msg)
                && let Some(sel) = ferry_fuzz::list_or_watch(
                    &r.kind,
                    &r.namespace,
                    &r.label_selector,
                    &r.field_selector,
                    "",
                )
                && let Some(o) = old.as_ref()
            {
                let _ = sel.matches(o);
            }
        }
        4 => {
            if let Ok(r) = WatchRequest::decode(msg)
                && let Some(sel) = ferry_fuzz::list_or_watch(
                    &r.kind,
                    &r.namespace,
                    &r.label_selector,
                    &r.field_selector,
                    &r.resource_version,
                )
                && let Some(o) = old.as_ref()
            {
                let _ = sel.matches(o);
            }
        }
        5 => {
            if let Ok(r) = GetRequest::decode(msg)
                && let Some(info) = ferry_fuzz::kind_info(&r.kind)
            {
                let ns = if r.namespace.is_empty() {
                    "default"
                } else {
                    &r.namespace
                };
                let _ = ferry_control::apiserver::objects::key(info, ns, &r.name);
            }
        }
        _ => {
            if let Ok(r) = DeleteRequest::decode(msg)
                && let Some(info) = ferry_fuzz::kind_info(&r.kind)
            {
                let ns = if r.namespace.is_empty() {
                    "default"
                } else {
                    &r.namespace
                };
                let _ = ferry_control::apiserver::objects::key(info, ns, &r.name);
                let _ = r.resource_version.parse::<u64>();
            }
        }
    }
});
