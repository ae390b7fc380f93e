//! The schema against the typed parsers and the driver code.

use std::cell::RefCell;
use std::collections::BTreeSet;

use serde::de::{self, Visitor};
use serde::Deserialize;
use serde_json::Value;

use super::schema;
use crate::qapi::*;

thread_local! {
    static FIELDS: RefCell<Vec<&'static str>> = const { RefCell::new(Vec::new()) };
}

/// A deserializer that records the field list a derived `Deserialize` declares
/// (serde passes it to `deserialize_struct`, already renamed) and then fails.
struct Capture;

impl<'de> de::Deserializer<'de> for Capture {
    type Error = de::value::Error;
    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not a struct"))
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        FIELDS.with(|f| *f.borrow_mut() = fields.to_vec());
        Err(de::Error::custom("captured"))
    }
    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

/// The member names the parser for `T` accepts.
fn parser_fields<T: for<'de> Deserialize<'de>>() -> BTreeSet<String> {
    FIELDS.with(|f| f.borrow_mut().clear());
    let _ = T::deserialize(Capture);
    FIELDS.with(|f| f.borrow().iter().map(|s| s.to_string()).collect())
}

/// The member names of an object type (base only).
fn members(ty: &str) -> BTreeSet<String> {
    let e = schema().get(ty).unwrap_or_else(|| panic!("{ty} undefined"));
    e["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect()
}

/// Base members plus the members of variant `case`, or of every variant.
fn union_members(ty: &str, case: Option<&str>) -> BTreeSet<String> {
    let e = schema().get(ty).unwrap();
    let mut out = members(ty);
    for v in e["variants"].as_array().unwrap() {
        if case.is_none() || v["case"].as_str() == case {
            out.extend(members(v["type"].as_str().unwrap()));
        }
    }
    out
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn without(mut s: BTreeSet<String>, refused: &[&str]) -> BTreeSet<String> {
    for r in refused {
        assert!(
            super::REFUSED_BY_NAME.iter().any(|(_, n)| n == r),
            "{r} missing from REFUSED_BY_NAME"
        );
        assert!(s.remove(*r), "{r} is not a parser field");
    }
    s
}

/// The parser of each command's arguments accepts exactly the members the schema
/// declares, apart from the options the parser reads only to refuse them by name
/// (listed here; the schema leaves them out because they do not work).
#[test]
fn parsers_accept_exactly_the_declared_members() {
    let blockdev = |case: &str| union_members("BlockdevOptions", Some(case));
    assert_eq!(parser_fields::<FileBlockdev>(), blockdev("file"));
    assert_eq!(parser_fields::<FileBlockdev>(), blockdev("host_device"));
    assert_eq!(parser_fields::<RawBlockdev>(), blockdev("raw"));
    assert_eq!(parser_fields::<Qcow2Blockdev>(), blockdev("qcow2"));
    assert_eq!(
        parser_fields::<BlklogwritesBlockdev>(),
        blockdev("blklogwrites")
    );
    let blkdebug_refused = [
        "align",
        "max-transfer",
        "opt-write-zero",
        "max-write-zero",
        "opt-discard",
        "max-discard",
        "take-child-perms",
        "unshare-child-perms",
    ];
    assert_eq!(
        without(parser_fields::<BlkdebugBlockdev>(), &blkdebug_refused),
        blockdev("blkdebug")
    );
    assert_eq!(
        parser_fields::<BlkdebugInjectError>(),
        members("BlkdebugInjectErrorOptions")
    );
    assert_eq!(
        parser_fields::<BlkdebugSetState>(),
        members("BlkdebugSetStateOptions")
    );
    assert_eq!(
        parser_fields::<CacheOptions>(),
        members("BlockdevCacheOptions")
    );
    // One struct reads every export type's members; the schema check refuses those
    // of the other type. `iothread` and non-empty `bitmaps` are refused by name.
    assert_eq!(
        without(
            parser_fields::<BlockExportOptions>(),
            &["iothread", "bitmaps"]
        ),
        union_members("BlockExportOptions", None)
    );
    assert_eq!(
        without(parser_fields::<ObjectOptions>(), &["priority"]),
        union_members("ObjectOptions", None)
    );
    assert_eq!(
        parser_fields::<NbdServerOptions>(),
        members("q_obj_nbd-server-start-arg")
    );
    assert_eq!(
        parser_fields::<BlockdevDelArgs>(),
        members("q_obj_blockdev-del-arg")
    );
    assert_eq!(
        parser_fields::<BlockExportDelArgs>(),
        members("q_obj_block-export-del-arg")
    );
    assert_eq!(
        parser_fields::<ObjectDelArgs>(),
        members("q_obj_object-del-arg")
    );
    assert_eq!(
        parser_fields::<QueryNamedBlockNodesArgs>(),
        members("q_obj_query-named-block-nodes-arg")
    );
}

/// Every command the schema declares reaches a handler in the dispatcher.
#[test]
fn schema_commands_are_dispatched() {
    use oxemu_qmp::{Dispatcher, ErrorClass};
    let d = crate::daemon::Daemon::new().unwrap();
    let ev = oxemu_qmp::EventBus::default();
    let builtin = set(&[
        "qmp_capabilities",
        "query-version",
        "query-commands",
        "query-qmp-schema",
    ]);
    for c in schema().commands() {
        if builtin.contains(c) || c == "quit" {
            continue;
        }
        // Bad arguments: every handler refuses them, none is missing.
        let r = d.dispatch(c, serde_json::json!({"no-such-member": 1}), &ev);
        if let Err(e) = &r {
            assert!(
                !matches!(e.class, ErrorClass::CommandNotFound),
                "{c}: {}",
                e.desc
            );
        }
    }
    let e = d
        .dispatch("block-stream", serde_json::json!({}), &ev)
        .unwrap_err();
    assert!(matches!(e.class, ErrorClass::CommandNotFound));
    d.shutdown(None);
}

/// Enums the schema declares are the values the code takes.
#[test]
fn enums_match_the_code() {
    let values = |ty: &str| -> BTreeSet<String> {
        schema().get(ty).unwrap()["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    let events: BTreeSet<String> = oxemu_block::blkdebug::DebugEvent::ALL
        .iter()
        .map(|e| e.name().to_string())
        .collect();
    assert_eq!(values("BlkdebugEvent"), events);
    for t in values("BlkdebugIOType") {
        assert!(t.parse::<oxemu_block::blkdebug::IoType>().is_ok(), "{t}");
    }
    for a in values("BlockdevAioOptions") {
        assert!(a.parse::<oxemu_block::Aio>().is_ok(), "{a}");
    }
    for m in values("Qcow2OverlapCheckMode") {
        assert!(
            m.parse::<oxemu_qcow2::overlap::OverlapCheck>().is_ok(),
            "{m}"
        );
    }
    assert!("all".parse::<oxemu_qcow2::overlap::OverlapCheck>().is_err());
    assert_eq!(
        values("BlockdevDriver"),
        set(&[
            "blkdebug",
            "blklogwrites",
            "file",
            "host_device",
            "qcow2",
            "raw"
        ])
    );
}

/// The introspection output is well formed in QEMU's format and masks type names.
#[test]
fn introspection_is_well_formed_and_masked() {
    let out = schema().introspect();
    oxemu_qmp::schema::check_introspection(&out).unwrap();
    // It validates against its own SchemaInfo type.
    schema().validate("[SchemaInfo]", &out).unwrap();
    let list = out.as_array().unwrap();
    for e in list {
        let name = e["name"].as_str().unwrap();
        match e["meta-type"].as_str().unwrap() {
            "command" | "event" => {}
            "builtin" => assert!(["str", "int", "number", "bool", "null", "any"].contains(&name)),
            _ => assert!(
                {
                    let inner = name.trim_start_matches('[').trim_end_matches(']');
                    inner.parse::<u32>().is_ok() || (name.starts_with('[') && inner == "str")
                },
                "unmasked type name {name}"
            ),
        }
    }
    let blockdev_add = list.iter().find(|e| e["name"] == "blockdev-add").unwrap();
    let arg = list
        .iter()
        .find(|e| e["name"] == blockdev_add["arg-type"])
        .unwrap();
    assert_eq!(arg["tag"], "driver");
    assert_eq!(arg["variants"].as_array().unwrap().len(), 6);
    let _: Value = arg.clone();
}
