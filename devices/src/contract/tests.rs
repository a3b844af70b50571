use super::*;

#[test]
fn instruction_parses_and_rejects() {
    let ok = br#"{"schema":1,"instruction_id":"i-1","waybill":"BL1","action":"release"}"#;
    assert_eq!(Instruction::parse(ok).unwrap().action, Action::Release);
    let wrong_schema = br#"{"schema":2,"instruction_id":"i-1","waybill":"BL1","action":"hold"}"#;
    assert!(matches!(
        Instruction::parse(wrong_schema),
        Err(MessageError::Schema { found: 2 })
    ));
    let unknown = br#"{"schema":1,"instruction_id":"i","waybill":"BL1","action":"fly"}"#;
    assert!(Instruction::parse(unknown).is_err());
    assert!(Instruction::parse(b"\xff\xfe garbage").is_err());
    let extra = br#"{"schema":1,"instruction_id":"i","waybill":"BL1","action":"hold","x":1}"#;
    assert!(Instruction::parse(extra).is_err());
}

#[test]
fn records_carry_their_kind_and_reject_unknown_fields() {
    let alert = Record::Alert(AlertRecord {
        schema: SCHEMA,
        msg_id: String::new(),
        seq: 0,
        prev_hash: String::new(),
        gateway: "gw".into(),
        line: "L1".into(),
        parcel: Some(7),
        waybill: None,
        alert: AlertKind::LateInstruction,
        detail: "x".into(),
        at_ms: 1,
    });
    let mut stamped = alert.clone();
    stamped.stamp(5, "ab".into());
    assert_eq!((stamped.seq(), stamped.msg_id()), (5, "gw-5"));
    let json = serde_json::to_string(&stamped).unwrap();
    assert!(json.starts_with("{\"kind\":\"alert\""), "{json}");
    assert_eq!(serde_json::from_str::<Record>(&json).unwrap(), stamped);
    let extra = json.replacen("\"detail\"", "\"bogus\":1,\"detail\"", 1);
    assert!(serde_json::from_str::<Record>(&extra).is_err());
}

#[test]
fn chained_records_carry_the_hash_of_their_predecessor_s_payload() {
    assert_eq!(
        hex::encode(chain_hash(b"abc")),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    let alert = |parcel| {
        Record::Alert(AlertRecord {
            schema: SCHEMA,
            msg_id: String::new(),
            seq: 0,
            prev_hash: String::new(),
            gateway: "gw".into(),
            line: "L1".into(),
            parcel: Some(parcel),
            waybill: None,
            alert: AlertKind::NoDisposition,
            detail: "x".into(),
            at_ms: 1,
        })
    };
    let (mut first, mut second) = (alert(1), alert(2));
    let (p1, h1) = first.chain_after(1, &GENESIS_HASH);
    let (p2, h2) = second.chain_after(2, &h1);
    assert_eq!(p1, serde_json::to_vec(&first).unwrap());
    assert_eq!((h1, h2), (chain_hash(&p1), chain_hash(&p2)));
    assert_eq!(first.prev_hash(), "0".repeat(64));
    assert_eq!(second.prev_hash(), hex::encode(h1));
    assert_eq!((second.seq(), second.msg_id()), (2, "gw-2"));
}

#[test]
fn declaration_needs_enterprise_and_waybill() {
    let ok = br#"{"schema":1,"waybill":"BL1","enterprise":"E1"}"#;
    assert!(Declaration::parse(ok).is_ok());
    let bad = br#"{"schema":1,"waybill":"","enterprise":"E1"}"#;
    assert!(Declaration::parse(bad).is_err());
}

#[test]
fn divert_statuses_are_named_as_records_name_them() {
    use DivertStatus::*;
    for s in [
        Acked,
        Timeout,
        Refused,
        LinkDown,
        Overload,
        DeadlineMissed,
        NotRecorded,
        Interrupted,
    ] {
        assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
    }
}
