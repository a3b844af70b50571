//! A consumer's name kept in the 40 bytes of its slot: most platforms name consumers by a
//! keyed hash in lowercase hexadecimal (32 or 64 digits), which is stored two digits to a
//! byte; any other name up to 32 bytes is stored as it is, and only a longer one on the heap.
//!
//! With one-off buyers the table holds as many consumers as declarations: an `Arc<str>` of a
//! 64-digit hash costs 16 bytes in the slot and a heap block of 96 with the allocator's
//! header, where this costs 40 bytes in all.

use std::sync::Arc;

/// Bytes kept in the slot.
const INLINE: usize = 32;

/// Hex digits kept in the slot (two to a byte).
const HEX_DIGITS: usize = INLINE * 2;

/// A consumer's name, packed when it is lowercase hexadecimal.
#[derive(Clone, PartialEq, Eq)]
pub(super) enum ConsumerName {
    /// `digits` lowercase hexadecimal digits, two to a byte, high nibble first.
    Hex {
        digits: u8,
        bytes: [u8; INLINE],
    },
    /// A name of up to [`INLINE`] bytes that is not lowercase hexadecimal.
    Inline {
        len: u8,
        bytes: [u8; INLINE],
    },
    Heap(Box<str>),
}

const _: () = assert!(std::mem::size_of::<ConsumerName>() == 40);

impl Default for ConsumerName {
    fn default() -> Self {
        ConsumerName::Inline {
            len: 0,
            bytes: [0; INLINE],
        }
    }
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

const DIGITS: &[u8; 16] = b"0123456789abcdef";

impl ConsumerName {
    pub(super) fn new(s: &str) -> ConsumerName {
        let b = s.as_bytes();
        if !b.is_empty() && b.len() <= HEX_DIGITS && b.iter().all(|&c| nibble(c).is_some()) {
            let mut bytes = [0u8; INLINE];
            for (i, &c) in b.iter().enumerate() {
                let n = nibble(c).unwrap_or(0);
                bytes[i / 2] |= if i % 2 == 0 { n << 4 } else { n };
            }
            ConsumerName::Hex {
                digits: b.len() as u8,
                bytes,
            }
        } else if b.len() <= INLINE {
            let mut bytes = [0u8; INLINE];
            bytes[..b.len()].copy_from_slice(b);
            ConsumerName::Inline {
                len: b.len() as u8,
                bytes,
            }
        } else {
            ConsumerName::Heap(s.into())
        }
    }

    /// Whether this is the name `s` (without decoding it).
    pub(super) fn is(&self, s: &str) -> bool {
        let b = s.as_bytes();
        match self {
            ConsumerName::Hex { digits, bytes } => {
                b.len() == *digits as usize
                    && b.iter().enumerate().all(|(i, &c)| {
                        let byte = bytes[i / 2];
                        let n = if i % 2 == 0 { byte >> 4 } else { byte & 0xf };
                        nibble(c) == Some(n)
                    })
            }
            ConsumerName::Inline { len, bytes } => &bytes[..*len as usize] == b,
            ConsumerName::Heap(h) => &**h == s,
        }
    }

    /// Runs `f` on the name as a string.
    pub(super) fn with_str<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        match self {
            ConsumerName::Hex { digits, bytes } => {
                let mut out = [0u8; HEX_DIGITS];
                for (i, o) in out.iter_mut().take(*digits as usize).enumerate() {
                    let byte = bytes[i / 2];
                    *o = DIGITS[usize::from(if i % 2 == 0 { byte >> 4 } else { byte & 0xf })];
                }
                // Hexadecimal digits are ASCII.
                f(std::str::from_utf8(&out[..*digits as usize]).unwrap_or_default())
            }
            // Built from a `&str` cut at its own length: always UTF-8.
            ConsumerName::Inline { len, bytes } => {
                f(std::str::from_utf8(&bytes[..*len as usize]).unwrap_or_default())
            }
            ConsumerName::Heap(h) => f(h),
        }
    }

    pub(super) fn to_arc(&self) -> Arc<str> {
        self.with_str(|s| Arc::from(s))
    }
}

impl std::fmt::Debug for ConsumerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.with_str(|s| std::fmt::Debug::fmt(s, f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn each_kind_of_name_reads_back() {
        let hash64 = "c9f0f895fb98ab9159f51fd0297e236dc9f0f895fb98ab9159f51fd0297e2360";
        for (s, hex) in [
            ("", false),
            ("7a2e31f6429bec53", true),
            ("abc", true),
            (hash64, true),
            ("C9F0F895", false),
            ("consumer-17", false),
            ("ééé", false),
            (&"x".repeat(32), false),
            (&"y".repeat(33), false),
            (&format!("{hash64}0"), false),
        ] {
            let n = ConsumerName::new(s);
            assert_eq!(n.with_str(str::to_string), s);
            assert_eq!(&*n.to_arc(), s);
            assert!(n.is(s), "{s:?}");
            assert_eq!(matches!(n, ConsumerName::Hex { .. }), hex, "{s:?}");
        }
        assert!(matches!(
            ConsumerName::new(&"y".repeat(33)),
            ConsumerName::Heap(_)
        ));
    }

    #[test]
    fn a_hex_name_is_not_its_prefix_or_another_case() {
        let n = ConsumerName::new("abc0");
        assert!(!n.is("abc"));
        assert!(!n.is("abc00"));
        assert!(!n.is("ABC0"));
        assert!(!n.is("abc1"));
        assert!(!ConsumerName::new("abc").is("abc0"));
    }

    proptest! {
        /// Any two names: each reads back as itself, and one is the other only when they
        /// are the same string.
        #[test]
        fn names_read_back_and_compare_as_strings(
            a in "[0-9a-f]{0,66}|[0-9a-fA-F.é]{0,40}|.{0,70}",
            b in "[0-9a-f]{0,66}|[0-9a-fA-F.é]{0,40}|.{0,70}",
        ) {
            let na = ConsumerName::new(&a);
            prop_assert_eq!(na.with_str(str::to_string), a.clone());
            prop_assert!(na.is(&a));
            prop_assert_eq!(na.is(&b), a == b);
            prop_assert_eq!(na == ConsumerName::new(&b), a == b);
        }
    }
}
