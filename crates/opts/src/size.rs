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

/// Parses a size as QEMU's `qemu_strtosz` does: a decimal number (`1024`, `1024.0`),
/// or `0x` and hex digits, with an optional suffix `B`, `k`, `M`, `G`, `T`, `P` or `E`
/// (binary multiples, either case). A fraction needs a suffix unless it is zero
/// (`1.5G`, `1.k`); it is exact to 2^-64 and rounds half up. Hex takes no fraction, and
/// an exponent (`1e3`) is refused. Leading blanks are skipped; a minus sign is refused.
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    let invalid = || SizeError::Invalid(s.into());
    let t = s.trim_start();
    if t.starts_with('-') || t.starts_with('+') {
        return Err(invalid());
    }
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(invalid());
    }
    let (int, mut rest) = t.split_at(digits);
    let mut val: u128 = int.parse().map_err(|_| SizeError::TooLarge(s.into()))?;
    if val > u64::MAX as u128 {
        return Err(SizeError::TooLarge(s.into()));
    }
    // The fraction as 64.64 fixed point.
    let mut frac: u128 = 0;
    if val == 0 && (rest.starts_with('x') || rest.starts_with('X')) {
        let h = &rest[1..];
        let n = h.bytes().take_while(u8::is_ascii_hexdigit).count();
        if n == 0 {
            return Err(invalid());
        }
        val = u128::from_str_radix(&h[..n], 16).map_err(|_| SizeError::TooLarge(s.into()))?;
        if val > u64::MAX as u128 {
            return Err(SizeError::TooLarge(s.into()));
        }
        rest = &h[n..];
        if rest.starts_with('.') {
            return Err(invalid());
        }
    } else if let Some(f) = rest.strip_prefix('.') {
        let n = f.bytes().take_while(u8::is_ascii_digit).count();
        if f[n..].starts_with(['e', 'E']) {
            return Err(invalid());
        }
        // Exact decimal to binary fixed point: floor(digits * 2^64 / 10^n), with at
        // most 38 digits kept (far below 2^-64).
        let kept = &f[..n.min(38)];
        if !kept.is_empty() {
            let num: u128 = kept.parse().map_err(|_| invalid())?;
            let den = 10u128.pow(kept.len() as u32);
            // num < den <= 10^38 < 2^127; split to avoid overflow of num << 64.
            let hi = (num << 32) / den;
            let rem = (num << 32) % den;
            frac = (hi << 32) + (rem << 32) / den;
        }
        rest = &f[n..];
    }
    let (shift, rest) = match rest.as_bytes().first() {
        Some(b'b' | b'B') => (0, &rest[1..]),
        Some(b'k' | b'K') => (10, &rest[1..]),
        Some(b'm' | b'M') => (20, &rest[1..]),
        Some(b'g' | b'G') => (30, &rest[1..]),
        Some(b't' | b'T') => (40, &rest[1..]),
        Some(b'p' | b'P') => (50, &rest[1..]),
        Some(b'e' | b'E') => (60, &rest[1..]),
        _ => (0, rest),
    };
    if !rest.is_empty() {
        return Err(invalid());
    }
    if shift == 0 && frac != 0 {
        return Err(invalid());
    }
    // val * 2^shift + frac * 2^shift, rounding the fraction's half up.
    let whole = val << shift;
    let f = frac << shift; // < 2^124
    let total = whole + (f >> 64) + ((f >> 63) & 1);
    if total > i64::MAX as u128 {
        return Err(SizeError::TooLarge(s.into()));
    }
    Ok(total as u64)
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
    fn hex_zero_fractions_and_rounding_follow_qemu_strtosz() {
        assert_eq!(parse_size("0x10000").unwrap(), 65536);
        assert_eq!(parse_size("1024.0").unwrap(), 1024);
        assert_eq!(parse_size("1.k").unwrap(), 1024);
        assert_eq!(parse_size(" 12").unwrap(), 12);
        assert_eq!(parse_size("1.5M").unwrap(), 1572864);
        assert_eq!(parse_size("0.5").is_err(), true);
        assert_eq!(parse_size("12.5").is_err(), true);
        assert_eq!(parse_size("1e3").is_err(), true);
        assert_eq!(parse_size("0x1.8p1k").is_err(), true);
        assert_eq!(parse_size("0x").is_err(), true);
        // 1/3 KiB is 341.33 bytes and 2/3 KiB is 682.67: half rounds up.
        assert_eq!(parse_size("0.3333333333333333333k").unwrap(), 341);
        assert_eq!(parse_size("0.6666666666666666666k").unwrap(), 683);
        assert_eq!(parse_size("8E").is_err(), true);
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
