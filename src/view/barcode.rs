//! Code 128 (code set B) as SVG, for the waybill on an inspection slip: a handheld scanner
//! at the inspection lane reads it back. Pure: text in, bars out.

/// Bar/space widths of the 107 symbols (in modules); every symbol but STOP is 11 modules.
const PATTERNS: [&str; 107] = [
    "212222", "222122", "222221", "121223", "121322", "131222", "122213", "122312", "132212",
    "221213", "221312", "231212", "112232", "122132", "122231", "113222", "123122", "123221",
    "223211", "221132", "221231", "213212", "223112", "312131", "311222", "321122", "321221",
    "312212", "322112", "322211", "212123", "212321", "232121", "111323", "131123", "131321",
    "112313", "132113", "132311", "211313", "231113", "231311", "112133", "112331", "132131",
    "113123", "113321", "133121", "313121", "211331", "231131", "213113", "213311", "213131",
    "311123", "311321", "331121", "312113", "312311", "332111", "314111", "221411", "431111",
    "111224", "111422", "121124", "121421", "141122", "141221", "112214", "112412", "122114",
    "122411", "142112", "142211", "241211", "221114", "413111", "241112", "134111", "111242",
    "121142", "121241", "114212", "124112", "124211", "411212", "421112", "421211", "212141",
    "214121", "412121", "111143", "111341", "131141", "114113", "114311", "411113", "411311",
    "113141", "114131", "311141", "411131", "211412", "211214", "211232", "2331112",
];
const START_B: usize = 104;
const STOP: usize = 106;
/// Quiet zone each side, in modules (the standard asks for at least 10).
const QUIET: u32 = 10;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BarcodeError {
    #[error("nothing to encode")]
    Empty,
    #[error("character {0:?} cannot be encoded in Code 128 set B (printable ASCII only)")]
    Unencodable(char),
    #[error("text longer than {0} characters")]
    TooLong(usize),
}

/// Longest text put on a slip (waybills are at most 64 characters).
pub const MAX_LEN: usize = 64;

/// The symbol values of `text`: START B, the characters, the checksum, STOP.
pub fn symbols(text: &str) -> Result<Vec<usize>, BarcodeError> {
    if text.is_empty() {
        return Err(BarcodeError::Empty);
    }
    if text.chars().count() > MAX_LEN {
        return Err(BarcodeError::TooLong(MAX_LEN));
    }
    let mut out = vec![START_B];
    for c in text.chars() {
        if !(' '..='~').contains(&c) {
            return Err(BarcodeError::Unencodable(c));
        }
        out.push(c as usize - 32);
    }
    let check = out
        .iter()
        .enumerate()
        .map(|(i, v)| if i == 0 { *v } else { i * v })
        .sum::<usize>()
        % 103;
    out.push(check);
    out.push(STOP);
    Ok(out)
}

/// The modules of `text` (true = bar), quiet zones included.
pub fn modules(text: &str) -> Result<Vec<bool>, BarcodeError> {
    let mut out = vec![false; QUIET as usize];
    for s in symbols(text)? {
        for (i, w) in PATTERNS[s].bytes().enumerate() {
            out.extend(std::iter::repeat_n(i % 2 == 0, (w - b'0') as usize));
        }
    }
    out.extend(std::iter::repeat_n(false, QUIET as usize));
    Ok(out)
}

/// An SVG of `text`'s bars, `module_px` wide per module and `height` tall, with the text
/// beneath for the officer's eye.
pub fn svg(text: &str, module_px: u32, height: u32) -> Result<String, BarcodeError> {
    let mods = modules(text)?;
    let width = mods.len() as u32 * module_px;
    let mut bars = String::new();
    let mut i = 0;
    while i < mods.len() {
        if mods[i] {
            let start = i;
            while i < mods.len() && mods[i] {
                i += 1;
            }
            bars.push_str(&format!(
                "<rect x=\"{}\" y=\"0\" width=\"{}\" height=\"{height}\"/>",
                start as u32 * module_px,
                (i - start) as u32 * module_px
            ));
        } else {
            i += 1;
        }
    }
    let total = height + 24;
    Ok(format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{total}\" viewBox=\"0 0 {width} {total}\" role=\"img\" aria-label=\"{label}\"><rect width=\"{width}\" height=\"{total}\" fill=\"#fff\"/><g fill=\"#000\">{bars}</g><text x=\"{mid}\" y=\"{ty}\" font-family=\"monospace\" font-size=\"18\" text-anchor=\"middle\">{label}</text></svg>",
        label = super::i18n::escape_html(text),
        mid = width / 2,
        ty = height + 20,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn the_table_is_well_formed() {
        let mut seen = HashSet::new();
        for (i, p) in PATTERNS.iter().enumerate() {
            let sum: u32 = p.bytes().map(|b| (b - b'0') as u32).sum();
            assert_eq!(sum, if i == STOP { 13 } else { 11 }, "symbol {i}");
            assert!(seen.insert(*p), "symbol {i} repeats");
            // Bars on odd widths: every symbol has an even number of bar modules.
            let bars: u32 = p.bytes().step_by(2).map(|b| (b - b'0') as u32).sum();
            assert_eq!(bars % 2, 0, "symbol {i}");
        }
    }

    /// Decodes modules back to text the way a scanner does: widths, symbol lookup, checksum.
    fn decode(mods: &[bool]) -> Option<String> {
        let first = mods.iter().position(|m| *m)?;
        let last = mods.iter().rposition(|m| *m)?;
        let mut widths = Vec::new();
        let mut i = first;
        while i <= last {
            let v = mods[i];
            let s = i;
            while i <= last && mods[i] == v {
                i += 1;
            }
            widths.push((b'0' + (i - s) as u8) as char);
        }
        let w: String = widths.into_iter().collect();
        let (body, stop) = w.split_at(w.len() - 7);
        if stop != PATTERNS[STOP] {
            return None;
        }
        let syms: Vec<usize> = body
            .as_bytes()
            .chunks(6)
            .map(|c| PATTERNS.iter().position(|p| p.as_bytes() == c))
            .collect::<Option<_>>()?;
        if syms.first() != Some(&START_B) {
            return None;
        }
        let data = &syms[1..syms.len() - 1];
        let check = (START_B
            + data
                .iter()
                .enumerate()
                .map(|(i, v)| (i + 1) * v)
                .sum::<usize>())
            % 103;
        if check != *syms.last()? {
            return None;
        }
        Some(data.iter().map(|v| (*v as u8 + 32) as char).collect())
    }

    #[test]
    fn a_known_code_encodes_as_the_standard_says() {
        // "PJJ123C": START B, the characters' values (ASCII − 32), the checksum by the
        // standard's weighting (start + Σ position·value, mod 103), STOP.
        let s = symbols("PJJ123C").unwrap();
        assert_eq!(s[0], 104);
        assert_eq!(&s[1..8], &[48, 42, 42, 17, 18, 19, 35]);
        let sum = 104 + 48 + 2 * 42 + 3 * 42 + 4 * 17 + 5 * 18 + 6 * 19 + 7 * 35;
        assert_eq!(s[8], sum % 103);
        assert_eq!(s[9], STOP);
    }

    #[test]
    fn bad_text_is_refused() {
        assert_eq!(symbols(""), Err(BarcodeError::Empty));
        assert_eq!(symbols("运单"), Err(BarcodeError::Unencodable('运')));
        assert_eq!(
            symbols(&"A".repeat(MAX_LEN + 1)),
            Err(BarcodeError::TooLong(MAX_LEN))
        );
        let svg = svg("A<&>", 2, 60).unwrap();
        assert!(svg.contains("A&lt;&amp;&gt;") && !svg.contains("A<&>"));
    }

    proptest::proptest! {
        #[test]
        fn every_printable_text_reads_back(text in "[ -~]{1,64}") {
            let mods = modules(&text).unwrap();
            proptest::prop_assert_eq!(decode(&mods), Some(text));
        }
    }
}
