//! Value parsers that accept exactly what upstream's Go flag values accept: `strconv.ParseBool`,
//! `strconv.ParseInt(s, 0, 64)` (Go int flags), klog's `-v` level (`ParseInt(s, 10, 32)`), klog's
//! `-vmodule` and `-log_backtrace_at` syntax.
//!
//! Pure functions, no I/O, never panic. They return a [`ValueError`] that says what was expected;
//! the caller adds the flag name and the value. Spec: flanneld-behaviour.md section 1.1.

/// Why a flag value was rejected. The caller names the flag and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("not a boolean (accepted: 1, t, T, TRUE, true, True, 0, f, F, FALSE, false, False)")]
    NotBool,
    #[error("not an integer")]
    NotInt,
    #[error("integer out of range {min}..={max}")]
    IntOutOfRange { min: i64, max: i64 },
    #[error("expected a comma-separated list of pattern=N with N >= 0")]
    BadVmodule,
    #[error("expected file.go:N with N > 0")]
    BadTraceLocation,
}

/// Go `strconv.ParseBool`.
pub fn parse_bool(text: &str) -> Result<bool, ValueError> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(ValueError::NotBool),
    }
}

/// Go `strconv.ParseInt(text, 0, 64)`, the parser behind Go `int` flags: optional sign, then
/// `0x`/`0o`/`0b` prefixes (any case), a leading `0` for octal, and `_` separators between digits.
pub fn parse_go_int(text: &str) -> Result<i64, ValueError> {
    let (negative, unsigned) = split_sign(text);
    let (radix, digits) = split_base_prefix(unsigned);
    let magnitude = parse_digits(digits, radix, true)?;
    if !underscores_ok(unsigned) {
        return Err(ValueError::NotInt);
    }
    to_signed(magnitude, negative, i64::MIN, i64::MAX)
}

/// klog `Level.Set`: `strconv.ParseInt(text, 10, 32)` (decimal only, no separators).
pub fn parse_klog_level(text: &str) -> Result<i32, ValueError> {
    let range = ValueError::IntOutOfRange {
        min: i64::from(i32::MIN),
        max: i64::from(i32::MAX),
    };
    let (negative, unsigned) = split_sign(text);
    let magnitude = parse_digits(unsigned, 10, false).map_err(|err| match err {
        ValueError::IntOutOfRange { .. } => range.clone(),
        other => other,
    })?;
    let value = to_signed(magnitude, negative, i64::from(i32::MIN), i64::from(i32::MAX))?;
    i32::try_from(value).map_err(|_| range)
}

/// klog `-vmodule` syntax check: `pattern=N[,pattern=N...]`, empty items ignored, N a decimal
/// 32-bit integer >= 0. The value itself is not used by this daemon.
pub fn check_vmodule(text: &str) -> Result<(), ValueError> {
    for item in text.split(',').filter(|item| !item.is_empty()) {
        let mut parts = item.split('=');
        let (Some(pattern), Some(level), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(ValueError::BadVmodule);
        };
        if pattern.is_empty() || level.is_empty() {
            return Err(ValueError::BadVmodule);
        }
        match parse_klog_level(level) {
            Ok(n) if n >= 0 => {}
            _ => return Err(ValueError::BadVmodule),
        }
    }
    Ok(())
}

/// klog `-log_backtrace_at` syntax check: empty (unset) or `file.ext:N` with N > 0.
/// The value itself is not used by this daemon.
pub fn check_trace_location(text: &str) -> Result<(), ValueError> {
    if text.is_empty() {
        return Ok(());
    }
    let mut parts = text.split(':');
    let (Some(file), Some(line), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(ValueError::BadTraceLocation);
    };
    if !file.contains('.') {
        return Err(ValueError::BadTraceLocation);
    }
    // Go's strconv.Atoi: decimal, optional sign; the line must be positive.
    match parse_klog_level(line) {
        Ok(n) if n > 0 => Ok(()),
        _ => Err(ValueError::BadTraceLocation),
    }
}

fn split_sign(text: &str) -> (bool, &str) {
    if let Some(rest) = text.strip_prefix('-') {
        (true, rest)
    } else if let Some(rest) = text.strip_prefix('+') {
        (false, rest)
    } else {
        (false, text)
    }
}

/// Go base-0 prefix rules: `0b`/`0o`/`0x` need at least one more character; otherwise a leading
/// `0` means octal. The octal `0` is kept in the digits (it does not change the value), so `0`
/// itself is zero and `0x` fails on `x` as in Go.
fn split_base_prefix(text: &str) -> (u32, &str) {
    let bytes = text.as_bytes();
    if bytes.first() != Some(&b'0') {
        return (10, text);
    }
    if bytes.len() >= 3 {
        let radix = match bytes.get(1).map(u8::to_ascii_lowercase) {
            Some(b'b') => Some(2),
            Some(b'o') => Some(8),
            Some(b'x') => Some(16),
            _ => None,
        };
        if let (Some(radix), Some(rest)) = (radix, text.get(2..)) {
            return (radix, rest);
        }
    }
    (8, text)
}

/// Accumulates the digits of `radix` into a u64. `_` is skipped when `allow_underscore` (its
/// placement is checked separately by [`underscores_ok`]). At least one digit is required.
fn parse_digits(digits: &str, radix: u32, allow_underscore: bool) -> Result<u64, ValueError> {
    let mut value: u64 = 0;
    let mut overflow = false;
    let mut saw_digit = false;
    for ch in digits.chars() {
        if ch == '_' && allow_underscore {
            continue;
        }
        let digit = ch.to_digit(radix).ok_or(ValueError::NotInt)?;
        saw_digit = true;
        match value
            .checked_mul(u64::from(radix))
            .and_then(|v| v.checked_add(u64::from(digit)))
        {
            Some(next) => value = next,
            None => overflow = true,
        }
    }
    if !saw_digit {
        return Err(ValueError::NotInt);
    }
    if overflow {
        return Err(ValueError::IntOutOfRange {
            min: i64::MIN,
            max: i64::MAX,
        });
    }
    Ok(value)
}

fn to_signed(magnitude: u64, negative: bool, min: i64, max: i64) -> Result<i64, ValueError> {
    let range = ValueError::IntOutOfRange { min, max };
    if negative {
        let limit = min.unsigned_abs();
        if magnitude > limit {
            return Err(range);
        }
        // magnitude <= |min|, so the negation fits.
        0i64.checked_sub_unsigned(magnitude).ok_or(range)
    } else {
        let value = i64::try_from(magnitude).map_err(|_| range.clone())?;
        if value > max { Err(range) } else { Ok(value) }
    }
}

/// Go `strconv.underscoreOK`: `_` only between digits or between a base prefix and a digit.
/// `text` has its sign already removed.
fn underscores_ok(text: &str) -> bool {
    #[derive(PartialEq)]
    enum Saw {
        Start,
        Digit,
        Underscore,
        Other,
    }
    let bytes = text.as_bytes();
    let mut saw = Saw::Start;
    let mut index = 0;
    let mut hex = false;
    if bytes.len() >= 2 && bytes.first() == Some(&b'0') {
        let marker = bytes.get(1).map(u8::to_ascii_lowercase);
        if matches!(marker, Some(b'b' | b'o' | b'x')) {
            index = 2;
            saw = Saw::Digit;
            hex = marker == Some(b'x');
        }
    }
    for &byte in bytes.iter().skip(index) {
        if byte.is_ascii_digit() || (hex && byte.is_ascii_hexdigit()) {
            saw = Saw::Digit;
        } else if byte == b'_' {
            if saw != Saw::Digit {
                return false;
            }
            saw = Saw::Underscore;
        } else {
            if saw == Saw::Underscore {
                return false;
            }
            saw = Saw::Other;
        }
    }
    saw != Saw::Underscore
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bools_follow_strconv_parse_bool() {
        for text in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(parse_bool(text), Ok(true), "{text}");
        }
        for text in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(parse_bool(text), Ok(false), "{text}");
        }
        for text in ["", "yes", "no", "maybe", "tRUE", "on", " true", "2"] {
            assert_eq!(parse_bool(text), Err(ValueError::NotBool), "{text:?}");
        }
    }

    #[test]
    fn ints_follow_strconv_parse_int_base_zero() {
        let good = [
            ("0", 0),
            ("5", 5),
            ("+5", 5),
            ("-5", -5),
            ("60", 60),
            ("0x1f", 31),
            ("0X1F", 31),
            ("0o17", 15),
            ("0O17", 15),
            ("017", 15),
            ("0b101", 5),
            ("0B101", 5),
            ("1_000", 1000),
            ("0x_1f", 31),
            ("0_7", 7),
            ("-0x10", -16),
            ("9223372036854775807", i64::MAX),
            ("-9223372036854775808", i64::MIN),
            ("00", 0),
        ];
        for (text, want) in good {
            assert_eq!(parse_go_int(text), Ok(want), "{text}");
        }
        let syntax = [
            "", "-", "+", "abc", "1.5", "0x", "0b", "0o", "0x_", "08", "09", "0b102", "1__0", "_1", "1_",
            "+-5", "--5", " 1", "1 ", "0xg", "1e3",
        ];
        for text in syntax {
            assert_eq!(parse_go_int(text), Err(ValueError::NotInt), "{text:?}");
        }
        for text in [
            "9223372036854775808",
            "-9223372036854775809",
            "0xffffffffffffffffff",
        ] {
            assert!(
                matches!(parse_go_int(text), Err(ValueError::IntOutOfRange { .. })),
                "{text}"
            );
        }
    }

    #[test]
    fn klog_level_is_decimal_32_bit() {
        assert_eq!(parse_klog_level("10"), Ok(10));
        assert_eq!(parse_klog_level("-1"), Ok(-1));
        assert_eq!(parse_klog_level("+3"), Ok(3));
        assert_eq!(parse_klog_level("010"), Ok(10));
        assert_eq!(parse_klog_level("2147483647"), Ok(i32::MAX));
        assert_eq!(parse_klog_level("-2147483648"), Ok(i32::MIN));
        for text in ["", "x", "0x10", "1_0", "1.0"] {
            assert_eq!(parse_klog_level(text), Err(ValueError::NotInt), "{text:?}");
        }
        assert!(matches!(
            parse_klog_level("2147483648"),
            Err(ValueError::IntOutOfRange { .. })
        ));
    }

    #[test]
    fn vmodule_syntax_matches_klog() {
        for text in ["", "main=2", "main=2,iface*=3", "a=0", "a=1,", ",,a=1"] {
            assert_eq!(check_vmodule(text), Ok(()), "{text:?}");
        }
        for text in ["main", "=2", "main=", "main=x", "main=-1", "a=1=2"] {
            assert_eq!(check_vmodule(text), Err(ValueError::BadVmodule), "{text:?}");
        }
    }

    #[test]
    fn trace_location_syntax_matches_klog() {
        for text in ["", "main.go:12", "x.y:1"] {
            assert_eq!(check_trace_location(text), Ok(()), "{text:?}");
        }
        for text in [
            ":0",
            "main.go:0",
            "main.go:-1",
            "main:3",
            "main.go",
            "a.go:1:2",
            "a.go:x",
        ] {
            assert_eq!(
                check_trace_location(text),
                Err(ValueError::BadTraceLocation),
                "{text:?}"
            );
        }
    }
}
