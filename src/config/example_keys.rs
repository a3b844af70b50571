//! deploy/bondline.toml says it documents every key. This test asks the parser which keys
//! each table accepts (a probe key makes `deny_unknown_fields` list them) and finds each one
//! written in the example, set or commented out, so the two cannot drift apart.

use super::Config;

/// One probe document per table the configuration has; `zz_probe` is the unknown key.
const PROBES: &[(&str, &str)] = &[
    ("top level", "zz_probe = 1"),
    ("[trust]", "[trust]\nzz_probe = 1"),
    ("[trust] keys", "[trust]\nkeys = [{ zz_probe = 1 }]"),
    ("[storage]", "[storage]\nzz_probe = 1"),
    ("[uplink]", "[uplink]\nzz_probe = 1"),
    ("[uplink] tls", "[uplink]\ntls = { zz_probe = 1 }"),
    ("[devices.NAME]", "[devices.d]\nzz_probe = 1"),
    (
        "[devices.NAME] serial",
        "[devices.d]\nserial = { zz_probe = 1 }",
    ),
    ("[[lines]]", "[[lines]]\nzz_probe = 1"),
    (
        "[[lines]] geometry",
        "[[lines]]\ngeometry = { zz_probe = 1 }",
    ),
    ("[[lines]] lanes", "[[lines]]\nlanes = [{ zz_probe = 1 }]"),
    ("[report]", "[report]\nzz_probe = 1"),
    ("[calendar]", "[calendar]\nzz_probe = 1"),
    ("[view]", "[view]\nzz_probe = 1"),
    ("[view] tls", "[view]\ntls = { zz_probe = 1 }"),
    ("[view] users", "[view]\nusers = [{ zz_probe = 1 }]"),
    ("[evidence]", "[evidence]\nzz_probe = 1"),
    ("[evidence] upload", "[evidence]\nupload = { zz_probe = 1 }"),
    ("[cameras.NAME]", "[cameras.c]\nzz_probe = 1"),
    (
        "[cameras.NAME] auth",
        "[cameras.c]\nauth = { zz_probe = 1 }",
    ),
];

/// The keys serde's "unknown field" message says the table accepts.
fn accepted(table: &str, probe: &str) -> Vec<String> {
    let err = Config::parse("probe.toml", probe)
        .err()
        .unwrap_or_else(|| panic!("{table}: the probe key was accepted"));
    let reason = err.to_string();
    let (_, list) = reason
        .split_once("expected ")
        .unwrap_or_else(|| panic!("{table}: not an unknown-field error: {reason}"));
    let list = list.strip_prefix("one of ").unwrap_or(list);
    let keys: Vec<String> = list
        .split(", ")
        .flat_map(|k| k.split(" or "))
        .map(|k| k.trim().trim_matches('`').to_string())
        .collect();
    assert!(
        keys.iter().all(|k| !k.is_empty() && !k.contains(' ')),
        "{table}: cannot read the key list from: {reason}"
    );
    keys
}

/// Whether `key` is written as a key (`key =`, or a table header `[key]`, `[[key]]`,
/// `[key.NAME]`; set or in a comment) in `text`.
fn written(text: &str, key: &str) -> bool {
    let header = [format!("[{key}]"), format!("[[{key}]]"), format!("[{key}.")];
    header.iter().any(|h| text.contains(h.as_str()))
        || text.match_indices(key).any(|(at, _)| {
            let before = text[..at].chars().next_back();
            let after = text[at + key.len()..].trim_start_matches(' ');
            !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') && after.starts_with('=')
        })
}

#[test]
fn every_accepted_key_is_in_the_example_configuration() {
    let example = include_str!("../../deploy/bondline.toml");
    let mut missing = Vec::new();
    let mut seen = 0;
    for (table, probe) in PROBES {
        for key in accepted(table, probe) {
            seen += 1;
            if !written(example, &key) {
                missing.push(format!("{table}: {key}"));
            }
        }
    }
    assert!(
        seen > 60,
        "only {seen} keys found: the probes stopped working"
    );
    assert!(
        missing.is_empty(),
        "deploy/bondline.toml lacks: {missing:?}"
    );
}

#[test]
fn the_probe_reads_key_lists_and_finds_written_keys() {
    assert!(accepted("[report]", "[report]\nzz_probe = 1") == ["publish_day"]);
    assert!(written("a = 1\n# margin_ms = 300", "margin_ms"));
    assert!(written("geometry = { margin_ms = 300 }", "margin_ms"));
    assert!(!written("xmargin_ms = 1", "margin_ms"));
    assert!(!written("the margin_ms key", "margin_ms"));
    assert!(written("# [cameras.entry-1]", "cameras"));
    assert!(written("[[lines]]", "lines"));
}
