//! Human-friendly units in the config file: durations (`"10s"`, `"250ms"`) and byte sizes
//! (`"16MiB"`, `"64KiB"`, `"1GB"`, or a plain integer number of bytes).
//!
//! Both are serde adapters used with `#[serde(with = "...")]`, so a bad value is reported by the
//! TOML parser together with the line and the key it came from.

use serde::{Deserialize, Deserializer};
use std::time::Duration;

/// Parses a byte size: an integer, optionally followed by a unit.
///
/// Binary units (`KiB`, `MiB`, `GiB`) are powers of 1024, decimal ones (`KB`, `MB`, `GB`) powers
/// of 1000, and `B` or no unit means bytes. Case is ignored; a space between number and unit is
/// allowed.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(format!(
            "`{text}` is not a size: expected a number with an optional unit, like \"16MiB\""
        ));
    }
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is too large"))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        other => {
            return Err(format!(
                "unknown size unit `{other}` in `{text}`: use B, KiB, MiB, GiB, KB, MB or GB"
            ));
        }
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// The longest duration the config accepts. Deadlines are computed as `now + duration`; a
/// longer value could overflow the clock, and no timeout or interval needs more than this.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// Parses a duration such as `"10s"`, `"250ms"`, `"1m 30s"`, at most [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text.trim()).map_err(|e| {
        format!(
            "`{text}` is not a duration ({e}): use a number with a unit, like \"10s\" or \"250ms\""
        )
    })?;
    if duration > MAX_DURATION {
        return Err(format!(
            "`{text}` is too long: durations are at most 365 days"
        ));
    }
    Ok(duration)
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeValue {
    Number(u64),
    Text(String),
}

/// `#[serde(deserialize_with)]` adapter for byte sizes.
pub fn size<'de, D: Deserializer<'de>>(de: D) -> Result<u64, D::Error> {
    match SizeValue::deserialize(de)? {
        SizeValue::Number(n) => Ok(n),
        SizeValue::Text(text) => parse_size(&text).map_err(serde::de::Error::custom),
    }
}

/// `#[serde(deserialize_with)]` adapter for optional byte sizes.
pub fn opt_size<'de, D: Deserializer<'de>>(de: D) -> Result<Option<u64>, D::Error> {
    size(de).map(Some)
}

/// `#[serde(deserialize_with)]` adapter for durations.
pub fn duration<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(de)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

/// `#[serde(deserialize_with)]` adapter for optional durations.
pub fn opt_duration<'de, D: Deserializer<'de>>(de: D) -> Result<Option<Duration>, D::Error> {
    duration(de).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("64 KiB"), Ok(64 << 10));
        assert_eq!(parse_size("1gib"), Ok(1 << 30));
        assert_eq!(parse_size("2MB"), Ok(2_000_000));
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("512B"), Ok(512));
    }

    #[test]
    fn bad_sizes_say_what_is_wrong() {
        assert!(parse_size("MiB").unwrap_err().contains("not a size"));
        assert!(
            parse_size("5 parsecs")
                .unwrap_err()
                .contains("unknown size unit")
        );
        assert!(
            parse_size("99999999999999999999GiB")
                .unwrap_err()
                .contains("too large")
        );
        assert!(
            parse_size("20000000000GiB")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn durations_parse_and_reject_garbage() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(
            parse_duration("soon")
                .unwrap_err()
                .contains("not a duration")
        );
        assert_eq!(parse_duration("365days"), Ok(MAX_DURATION));
        for huge in ["1000000000y", "366days", "18446744073709551615s"] {
            let error = parse_duration(huge).unwrap_err();
            assert!(
                error.contains("too long") || error.contains("not a duration"),
                "{huge}: {error}"
            );
        }
    }
}
