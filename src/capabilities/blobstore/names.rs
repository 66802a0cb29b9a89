//! Container and object names as backends can hold them: one reversible encoding.
//!
//! Guests name containers and objects with any string: `..`, `/`, NUL, unicode. Backends that
//! turn names into file names (`fs`), bucket names (`nats`) or key segments (`s3`) store the
//! encoded form: ASCII letters, digits, `-` and `_` stay as they are, every other byte becomes
//! an escape character and two upper-case hex digits. So an encoded name is never empty, `.` or
//! `..`, never holds a `/` or NUL, and never starts with `.` (which leaves names starting with `.`
//! to the backends' own bookkeeping, like temporary files). The escape character is `%` where
//! it may appear, and `_` for NATS bucket names, whose alphabet has no `%` (`_` itself is then
//! escaped).

/// How an encoded name marks an escaped byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    /// `%2F`: file names and S3 keys.
    Percent,
    /// `_2F`: NATS object store bucket names (`[A-Za-z0-9_-]`).
    Underscore,
}

impl Escape {
    fn byte(self) -> u8 {
        match self {
            Escape::Percent => b'%',
            Escape::Underscore => b'_',
        }
    }

    fn keeps(self, byte: u8) -> bool {
        byte.is_ascii_alphanumeric() || byte == b'-' || (byte == b'_' && self == Escape::Percent)
    }
}

/// The encoded form of `name`.
pub fn encode(name: &str, escape: Escape) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(name.len());
    for byte in name.bytes() {
        if escape.keeps(byte) {
            out.push(char::from(byte));
        } else {
            out.push(char::from(escape.byte()));
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xF)]));
        }
    }
    out
}

/// The name `encoded` stands for; `None` if it is not an encoding this module made (a file
/// someone else put in a store's directory, say).
pub fn decode(encoded: &str, escape: Escape) -> Option<String> {
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if byte == escape.byte() {
            let hex = encoded.get(i + 1..i + 3)?;
            let value = u8::from_str_radix(hex, 16).ok()?;
            if escape.keeps(value) || hex.bytes().any(|b| b.is_ascii_lowercase()) {
                return None;
            }
            out.push(value);
            i += 3;
        } else if escape.keeps(byte) {
            out.push(byte);
            i += 1;
        } else {
            return None;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_names_encode_to_safe_ones_and_back() {
        for escape in [Escape::Percent, Escape::Underscore] {
            for name in [
                "plain",
                "..",
                ".",
                "a/b",
                "../../etc/passwd",
                "nul\0byte",
                "名前.txt",
                "with space",
                "50%_off",
                "x".repeat(300).as_str(),
                "-_-",
            ] {
                let encoded = encode(name, escape);
                assert!(
                    encoded
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"%_-".contains(&b)),
                    "{encoded}"
                );
                assert!(!encoded.starts_with('.') && !encoded.is_empty());
                assert_eq!(decode(&encoded, escape).as_deref(), Some(name), "{encoded}");
            }
        }
        assert_eq!(encode("a/b", Escape::Percent), "a%2Fb");
        assert_eq!(encode("a_b", Escape::Underscore), "a_5Fb");
    }

    #[test]
    fn foreign_names_do_not_decode() {
        for foreign in [".tmp-1", "a%2", "a%zz", "a%41", "a%2f", "a b"] {
            assert_eq!(decode(foreign, Escape::Percent), None, "{foreign}");
        }
        assert_eq!(decode("a_5fb", Escape::Underscore), None);
    }
}
