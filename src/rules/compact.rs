//! A string kept in 24 bytes: inline up to 22 bytes, on the heap beyond.
//!
//! Waybills and instruction ids are short (12 to 20 characters on every platform seen), and a
//! gateway holds millions of them: a `Box<str>` costs 16 bytes plus a heap block of 32 with
//! the allocator's header, where this keeps the usual id in the 24 bytes of its slot.

/// Bytes kept inline.
const INLINE: usize = 22;

/// A short string stored inline, a long one boxed.
#[derive(Clone, PartialEq, Eq)]
pub enum Compact {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<str>),
}

const _: () = assert!(std::mem::size_of::<Compact>() == 24);

impl Compact {
    pub fn new(s: &str) -> Compact {
        if s.len() <= INLINE {
            let mut bytes = [0u8; INLINE];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            Compact::Inline {
                len: s.len() as u8,
                bytes,
            }
        } else {
            Compact::Heap(s.into())
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            // Built from a `&str` cut at its own length: always UTF-8.
            Compact::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..*len as usize]).unwrap_or_default()
            }
            Compact::Heap(s) => s,
        }
    }
}

impl std::fmt::Debug for Compact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_strings_read_back() {
        for s in [
            "",
            "BL000000000123",
            "ééé",
            &"x".repeat(22),
            &"y".repeat(64),
        ] {
            assert_eq!(Compact::new(s).as_str(), s);
        }
        assert!(matches!(
            Compact::new(&"x".repeat(22)),
            Compact::Inline { .. }
        ));
        assert!(matches!(Compact::new(&"x".repeat(23)), Compact::Heap(_)));
    }
}
