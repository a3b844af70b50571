//! Values echoed in configuration errors are cut: a 100,000-character `gateway_id` (or
//! device name, or path) must not be written back whole into a terminal or the journal of
//! a unit that restarts in a loop. The start of the value and its length say enough.

/// Longest value shown whole; a longer one shows its first this many characters.
pub const SHOWN_CHARS: usize = 64;

/// Longest reason (after cutting quoted values) shown whole.
const REASON_CHARS: usize = 1024;

/// `value` itself if short, else its first [`SHOWN_CHARS`] characters, `…` and its length.
pub fn shown(value: &str) -> String {
    let chars = value.chars().count();
    if chars <= SHOWN_CHARS {
        return value.to_string();
    }
    let head: String = value.chars().take(SHOWN_CHARS).collect();
    format!("{head}… ({chars} characters)")
}

/// A message with every `` `quoted` `` value cut by [`shown`], and the whole cut to
/// [`REASON_CHARS`] characters (for values quoted otherwise, such as serde's).
pub fn cut_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(2 * REASON_CHARS));
    let mut rest = text;
    while let Some(open) = rest.find('`') {
        out.push_str(&rest[..=open]);
        let after = &rest[open + 1..];
        match after.find('`') {
            Some(close) => {
                out.push_str(&shown(&after[..close]));
                out.push('`');
                rest = &after[close + 1..];
            }
            None => {
                rest = after;
                break;
            }
        }
    }
    out.push_str(rest);
    let chars = out.chars().count();
    if chars > REASON_CHARS {
        let head: String = out.chars().take(REASON_CHARS).collect();
        return format!("{head}… ({chars} characters in all)");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_cut_and_measured() {
        assert_eq!(shown("gw-01"), "gw-01");
        let long = "x".repeat(100_000);
        let s = shown(&long);
        assert!(
            s.starts_with(&"x".repeat(64)) && s.ends_with("… (100000 characters)"),
            "{s}"
        );
        assert!(s.len() < 100);
        let m = cut_message(&format!("`{long}` must be 1 to 32 characters"));
        assert_eq!(
            m,
            format!(
                "`{}… (100000 characters)` must be 1 to 32 characters",
                "x".repeat(64)
            )
        );
        // Unbalanced quotes and unquoted values: the whole is capped.
        let m = cut_message(&format!("invalid type: string \"{long}\", expected `u64"));
        assert!(m.chars().count() < 1100, "{}", m.len());
        assert!(m.ends_with("characters in all)"));
        assert_eq!(cut_message("plain `ok` text"), "plain `ok` text");
    }

    #[test]
    fn a_huge_gateway_id_is_not_echoed_whole() {
        let text = format!(
            "gateway_id = \"{}\"\n[storage]\npath = \"/tmp/j\"\n[uplink]\nbroker = \"127.0.0.1:1883\"\nclient_id = \"c\"\ntopic_prefix = \"p\"\n",
            "g".repeat(100_000)
        );
        let e = crate::config::Config::parse("big.toml", &text).unwrap_err();
        let msg = e.to_string();
        assert!(msg.len() < 300, "{} bytes: {}", msg.len(), &msg[..300]);
        assert!(msg.contains("key `gateway_id`"), "{msg}");
        assert!(msg.contains("(100000 characters)"), "{msg}");
    }
}
