"""query-qmp-schema of oxemu-storage-daemon read through the `qemu.qmp` library and
checked in Python, independently of oxemu's own Rust checks: QEMU's SchemaInfo
structure, every referenced type defined, type names masked as QEMU masks them, and
every command's argument and return members (per union variant) present in the real
qemu-storage-daemon 7.2's schema."""

import asyncio

from qemu.qmp import QMPClient

FIELDS = {
    "builtin": {"json-type"},
    "enum": {"members", "values"},
    "array": {"element-type"},
    "object": {"members"},
    "alternate": {"members"},
    "command": {"arg-type", "ret-type"},
    "event": {"arg-type"},
}
BUILTINS = {"str", "int", "number", "bool", "null", "any"}
# oxemu extensions (x-inline; handshake-max-seconds is QEMU 9.1's)
EXTENSIONS = {"x-inline", "handshake-max-seconds"}


async def schema_of(sock):
    q = QMPClient("schema")
    await q.connect(str(sock))
    try:
        return await q.execute("query-qmp-schema")
    finally:
        await q.disconnect()


def check_structure(schema):
    by_name = {}
    for e in schema:
        assert "name" in e and e["meta-type"] in FIELDS, e
        assert e["name"] not in by_name, f"{e['name']} twice"
        assert FIELDS[e["meta-type"]] <= e.keys(), e
        by_name[e["name"]] = e
    for e in schema:
        refs = [e.get(k) for k in ("arg-type", "ret-type", "element-type")]
        refs += [m.get("type") for m in e.get("members", []) if isinstance(m, dict)]
        refs += [v["type"] for v in e.get("variants", [])]
        for r in filter(None, refs):
            assert r in by_name and by_name[r]["meta-type"] not in ("command", "event"), (e["name"], r)
        if e["meta-type"] == "object" and "tag" in e:
            tag_type = next(m["type"] for m in e["members"] if m["name"] == e["tag"])
            assert {v["case"] for v in e["variants"]} == set(by_name[tag_type]["values"]), e["name"]
    return by_name


def shape(by_name, t):
    t = t.strip("[]")
    e = by_name[t]
    if e["meta-type"] != "object":
        return {None: e["meta-type"]}
    out = {"": {m["name"] for m in e["members"]}}
    for v in e.get("variants", []):
        out[v["case"]] = {m["name"] for m in by_name[v["type"]]["members"]}
    return out


def test_schema_structure_masking_and_members_match_qemu(oxemu, qsd):
    ours = asyncio.run(schema_of(oxemu().qmp[0]))
    theirs = asyncio.run(schema_of(qsd().qmp[0]))
    o, q = check_structure(ours), check_structure(theirs)
    for name, e in o.items():
        if e["meta-type"] in ("command", "event"):
            assert name in q, f"{name} is not in qemu-storage-daemon's schema"
            for k in ("arg-type", "ret-type"):
                if k not in e:
                    continue
                os_, qs = shape(o, e[k]), shape(q, q[name][k])
                if None in os_:
                    assert os_ == qs, (name, k)
                    continue
                for case, members in os_.items():
                    assert case in qs, (name, k, case)
                    extra = members - qs[case] - EXTENSIONS
                    assert not extra, f"{name} {k} {case!r}: {extra} not in QEMU's schema"
        else:
            assert name.strip("[]").isdigit() or name.strip("[]") in BUILTINS, f"unmasked {name}"
    commands = {n for n, e in o.items() if e["meta-type"] == "command"}
    assert {"blockdev-add", "block-export-add", "query-named-block-nodes", "query-qmp-schema"} <= commands
    # The drivers offered are exactly the ones oxemu implements.
    ba = o[o["blockdev-add"]["arg-type"]]
    assert [v["case"] for v in ba["variants"]] == ["blkdebug", "blklogwrites", "file", "host_device", "qcow2", "raw"]
