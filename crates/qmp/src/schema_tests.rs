//! Unit tests of the schema module.

use super::*;

const SRC: &str = r#"[
 {"name": "cmd", "meta-type": "command", "arg-type": "Opts", "ret-type": "[Info]"},
 {"name": "EV", "meta-type": "event", "arg-type": "Info"},
 {"name": "Kind", "meta-type": "enum", "values": ["a", "b", "c"]},
 {"name": "Opts", "meta-type": "object", "tag": "kind",
  "members": [{"name": "kind", "type": "Kind"}, {"name": "x", "type": "int", "default": null}],
  "variants": [{"case": "a", "type": "OptsA"}]},
 {"name": "OptsA", "meta-type": "object", "members": [{"name": "ref", "type": "Ref"}]},
 {"name": "Ref", "meta-type": "alternate", "members": [{"type": "Opts"}, {"type": "str"}]},
 {"name": "Info", "meta-type": "object", "members": [{"name": "id", "type": "str"}]},
 {"name": "Unused", "meta-type": "object", "members": []}
]"#;

fn schema() -> Schema {
    Schema::parse(&[BUILTIN_SCHEMA, SRC]).unwrap()
}

#[test]
fn bad_sources_are_refused_with_the_entry_named() {
    let undefined =
        r#"[{"name": "c", "meta-type": "command", "arg-type": "Nope", "ret-type": "q_empty"}]"#;
    let e = Schema::parse(&[BUILTIN_SCHEMA, undefined]).unwrap_err();
    assert!(e.contains("'c' refers to undefined type 'Nope'"), "{e}");
    let twice = r#"[{"name": "str", "meta-type": "builtin", "json-type": "string"}]"#;
    assert!(Schema::parse(&[BUILTIN_SCHEMA, twice])
        .unwrap_err()
        .contains("defined twice"));
    let bad_case = SRC.replace(r#""case": "a""#, r#""case": "z""#);
    let e = Schema::parse(&[BUILTIN_SCHEMA, &bad_case]).unwrap_err();
    assert!(e.contains("variant 'z' outside its tag enum"), "{e}");
    assert!(Schema::parse(&["{"]).is_err());
}

#[test]
fn members_are_checked_per_variant_and_through_alternates() {
    let s = schema();
    let ok = json!({"kind": "a", "x": 1, "ref": {"kind": "b"}});
    s.check_members("Opts", &ok).unwrap();
    let e = s
        .check_members("Opts", &json!({"kind": "b", "ref": "n"}))
        .unwrap_err();
    assert_eq!(e.desc, "Parameter 'ref' is unexpected");
    let e = s
        .check_members("Opts", &json!({"kind": "a", "ref": {"kind": "c", "y": 1}}))
        .unwrap_err();
    assert_eq!(e.desc, "Parameter 'ref.y' is unexpected");
    // An unknown tag value is the parser's to report.
    s.check_members("Opts", &json!({"kind": "q", "y": 1}))
        .unwrap();
    s.check_members_except("Opts", &json!({"kind": "b", "ref": 1}), &[("Opts", "ref")])
        .unwrap();
}

#[test]
fn values_are_validated_against_types() {
    let s = schema();
    s.validate("[Info]", &json!([{"id": "x"}])).unwrap();
    assert!(s
        .validate("[Info]", &json!([{}]))
        .unwrap_err()
        .contains("id"));
    assert!(s.validate("Info", &json!({"id": 1})).is_err());
    assert!(s.validate("Opts", &json!({"kind": "d"})).is_err());
    assert!(s
        .validate("Opts", &json!({"x": 1}))
        .unwrap_err()
        .contains("tag"));
}

#[test]
fn introspection_masks_type_names_and_lists_only_reachable_entities() {
    let out = schema().introspect();
    check_introspection(&out).unwrap();
    let names: Vec<&str> = out
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    // Builtin commands first (schema order), then types by first use.
    assert!(names.contains(&"cmd") && names.contains(&"EV"));
    assert!(!names
        .iter()
        .any(|n| ["Opts", "Info", "Kind", "Unused"].contains(n)));
    let cmd = out
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "cmd")
        .unwrap();
    let arg = cmd["arg-type"].as_str().unwrap();
    assert!(arg.parse::<u32>().is_ok(), "{arg}");
    let ret = cmd["ret-type"].as_str().unwrap();
    assert!(ret.starts_with('[') && ret.ends_with(']'), "{ret}");
    let opts = out
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == arg)
        .unwrap();
    // Every tag value has a variant; those without members get the empty object.
    assert_eq!(opts["variants"].as_array().unwrap().len(), 3);
    let kind = &opts["members"][0]["type"];
    let en = out
        .as_array()
        .unwrap()
        .iter()
        .find(|e| &e["name"] == kind)
        .unwrap();
    assert_eq!(
        en["members"],
        json!([{"name": "a"}, {"name": "b"}, {"name": "c"}])
    );
    // The answer is itself a valid [SchemaInfo].
    schema().validate("[SchemaInfo]", &out).unwrap();
    // A reference to an undefined name is caught by the structural check.
    let mut broken = out.clone();
    broken.as_array_mut().unwrap().retain(|e| e["name"] != arg);
    assert!(check_introspection(&broken)
        .unwrap_err()
        .contains("not defined"));
}
