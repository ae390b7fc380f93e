//! Sizes written the way QEMU's command lines accept them (`qemu_strtosz`).

/// Error for a size string that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// Not a number with an optional suffix.
    #[error("invalid size '{0}': use a number with an optional k, M, G, T, P or E suffix")]
    Invalid(String),
    /// Larger than 2^63 - 1 bytes.
    #[error("size '{0}' is too large")]
    TooLarge(String),
}

/// Parses `1024`, `64k`, `1.5G`, `2M`, `10T`... Suffixes are binary multiples and
/// case-insensitive; `B` means bytes. Fractions are allowed with a suffix, as in QEMU.
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    if num.is_empty() || num.starts_with('.') {
        return Err(SizeError::Invalid(s.into()));
    }
    let shift = match suffix {
        "" | "b" | "B" => 0,
        "k" | "K" => 10,
        "m" | "M" => 20,
        "g" | "G" => 30,
        "t" | "T" => 40,
        "p" | "P" => 50,
        "e" | "E" => 60,
        _ => return Err(SizeError::Invalid(s.into())),
    };
    let mult = 1u128 << shift;
    let value: u128 = if let Some((int, frac)) = num.split_once('.') {
        if shift == 0 || frac.contains('.') || frac.is_empty() {
            return Err(SizeError::Invalid(s.into()));
        }
        let i: u128 = int.parse().map_err(|_| SizeError::TooLarge(s.into()))?;
        let f: f64 = format!("0.{frac}")
            .parse()
            .map_err(|_| SizeError::Invalid(s.into()))?;
        i.checked_mul(mult)
            .ok_or_else(|| SizeError::TooLarge(s.into()))?
            + (f * mult as f64) as u128
    } else {
        let i: u128 = num.parse().map_err(|_| SizeError::TooLarge(s.into()))?;
        i.checked_mul(mult)
            .ok_or_else(|| SizeError::TooLarge(s.into()))?
    };
    if value > i64::MAX as u128 {
        return Err(SizeError::TooLarge(s.into()));
    }
    Ok(value as u64)
}

/// Formats a byte count as `qemu-img info` does: `1 GiB`, `1.5 MiB`, `512 B`.
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        return format!("{n} B");
    }
    // QEMU prints three significant digits and drops trailing zeros.
    let digits = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    let s = format!("{v:.digits$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    format!("{s} {}", UNITS[u])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_are_binary_and_case_insensitive() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("64k").unwrap(), 65536);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("1.5M").unwrap(), 3 << 19);
        assert_eq!(parse_size("2t").unwrap(), 2 << 40);
    }

    #[test]
    fn garbage_and_overflow_are_refused() {
        assert!(parse_size("").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("1Q").is_err());
        assert!(parse_size("1.5").is_err());
        assert!(matches!(parse_size("16E"), Err(SizeError::TooLarge(_))));
    }

    #[test]
    fn human_sizes_match_qemu_img() {
        assert_eq!(human_size(1 << 30), "1 GiB");
        assert_eq!(human_size(196616), "192 KiB");
        assert_eq!(human_size(1536 * 1024), "1.5 MiB");
        assert_eq!(human_size(100), "100 B");
    }
}
