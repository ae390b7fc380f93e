use super::*;
use serde_json::json;

fn reg() -> TypeRegistry {
    let mut r = TypeRegistry::new();
    crate::types::register_standard(&mut r);
    r
}

#[test]
fn is_a_follows_parents_and_interfaces() {
    let r = reg();
    assert!(r.is_a("cortex-a57-arm-cpu", "arm-cpu"));
    assert!(r.is_a("cortex-a57-arm-cpu", "device"));
    assert!(r.is_a("memory-backend-ram", "user-creatable"));
    assert!(!r.is_a("oxemu-test-device", "cpu"));
    assert!(r.get("arm-cpu").unwrap().is_abstract);
    let names: Vec<&str> = r
        .list(Some("arm-cpu"), false)
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(
        names,
        ["cortex-a57-arm-cpu", "cortex-a72-arm-cpu", "max-arm-cpu"]
    );
    assert!(r
        .list(Some("arm-cpu"), true)
        .iter()
        .any(|t| t.name == "arm-cpu"));
    // Registration checks parents and duplicates.
    let mut r2 = r.clone();
    assert!(r2.register(TypeInfo::new("x", "no-such-parent")).is_err());
    assert!(r2.register(TypeInfo::new("container", "object")).is_err());
}

#[test]
fn inherited_and_overridden_properties() {
    let r = reg();
    let props = r.all_props("memory-backend-memfd");
    let share = props.iter().find(|p| p.name == "share").unwrap();
    assert_eq!(
        share.default,
        Some(json!(true)),
        "memfd overrides share's default"
    );
    assert_eq!(
        r.find_prop("memory-backend-ram", "share").unwrap().default,
        Some(json!(false))
    );
    assert!(r.find_prop("cortex-a72-arm-cpu", "has_el3").is_some());
    let o = Object::instantiate(&r, "cortex-a72-arm-cpu").unwrap();
    assert_eq!(o.props["midr"], json!(0x410f_d083u64));
    assert_eq!(
        Object::instantiate(&r, "arm-cpu").err().unwrap().0,
        "object type 'arm-cpu' is abstract"
    );
}

#[test]
fn property_values_parse_with_qemu_rules() {
    assert_eq!(PropType::Bool.parse_str("x", "on"), Ok(json!(true)));
    assert_eq!(PropType::Bool.parse_str("x", "no"), Ok(json!(false)));
    assert_eq!(
        PropType::Bool.parse_str("x", "maybe"),
        Err("Parameter 'x' expects 'on' or 'off'".into())
    );
    assert_eq!(PropType::U32.parse_str("a", "0x10"), Ok(json!(16)));
    assert_eq!(
        PropType::U8.parse_str("a", "256"),
        Err("Parameter 'a' expects uint8".into())
    );
    assert_eq!(PropType::I32.parse_str("a", "-5"), Ok(json!(-5)));
    assert_eq!(PropType::Size.parse_str("s", "2M"), Ok(json!(2u64 << 20)));
    assert_eq!(parse_size("1.5k"), Some(1536));
    assert_eq!(parse_size("16E"), None, "overflows");
    assert_eq!(parse_size("4X"), None);
    assert_eq!(
        PropType::U64.check_json("addr", &json!("1")),
        Err("Invalid parameter type for 'addr', expected: integer".into())
    );
    assert_eq!(PropType::Link("x".into()).qom_name(), "link<x>");
}

#[test]
fn tree_paths_indices_and_resolution() {
    let mut t = ObjectTree::new();
    let root = t.root();
    let m = t
        .add_child(root, "machine", Object::bare("none-machine"))
        .unwrap();
    let un = t.container(m, "unattached");
    let d0 = t.add_child(un, "device[*]", Object::bare("a")).unwrap();
    let d1 = t.add_child(un, "device[*]", Object::bare("b")).unwrap();
    assert_eq!(t.path(d1), "/machine/unattached/device[1]");
    assert_eq!(t.resolve("/machine/unattached/device[0]"), Ok(d0));
    assert_eq!(t.resolve("device[1]"), Ok(d1));
    assert_eq!(t.resolve("unattached/device[1]"), Ok(d1));
    assert_eq!(t.resolve("nothing"), Err(false));
    let per = t.container(m, "peripheral");
    t.add_child(per, "device[*]", Object::bare("c")).unwrap();
    assert_eq!(t.resolve("device[0]"), Err(true), "ambiguous");
    assert!(t
        .add_child(m, "unattached", Object::bare("x"))
        .unwrap_err()
        .0
        .contains("duplicate property 'unattached'"));
    // Freed index is reused.
    let gone = t.remove(d0);
    assert_eq!(gone.len(), 1);
    let d2 = t.add_child(un, "device[*]", Object::bare("d")).unwrap();
    assert_eq!(t.path(d2), "/machine/unattached/device[0]");
    let mut s = String::new();
    t.print_tree(m, &mut s);
    assert_eq!(
        s,
        "/machine (none-machine)\n  /peripheral (container)\n    /device[0] (c)\n  /unattached (container)\n    /device[0] (d)\n    /device[1] (b)\n"
    );
}
