//! Go `encoding/json` semantics that upstream's files and etcd values depend on: object keys that
//! match struct fields case-insensitively (every occurrence in document order assigns, so the last
//! one wins), typed decoding of single values with Go's strictness (a `uint` accepts only an
//! unsigned integer literal, a `string` only a JSON string), and Go's encoder output (compact, with
//! `<`, `>`, `&`, U+2028 and U+2029 escaped).
//!
//! Shared by `lease` (spec section 3.2) and `netconf` (spec section 2). Pure code, no I/O; it must not
//! know about any particular document shape.

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// A JSON object with its members in document order, duplicates kept, values still raw.
#[derive(Debug, Default)]
pub(crate) struct GoObject {
    pub(crate) members: Vec<(String, Box<RawValue>)>,
}

impl<'de> Deserialize<'de> for GoObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = GoObject;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<GoObject, A::Error> {
                let mut members = Vec::new();
                while let Some((key, value)) = map.next_entry::<String, Box<RawValue>>()? {
                    members.push((key, value));
                }
                Ok(GoObject { members })
            }
        }
        deserializer.deserialize_map(ObjectVisitor)
    }
}

impl GoObject {
    /// Parse `text` as one JSON object; anything else (array, string, null, trailing data) is an error.
    pub(crate) fn parse(text: &str) -> Result<GoObject, String> {
        serde_json::from_str::<GoObject>(text).map_err(|e| e.to_string())
    }

    /// Assign members to the known field names the way Go does: a key selects the field with the
    /// exact same name, else the one whose name folds equal; every occurrence assigns, so the last
    /// occurrence in the document wins. Unknown keys are ignored.
    pub(crate) fn fields<'a>(&'a self, names: &[&'static str]) -> Fields<'a> {
        let folded: Vec<String> = names.iter().map(|n| fold_key(n)).collect();
        let mut found: Vec<(&'static str, &'a str, &'a RawValue)> = Vec::new();
        for (key, value) in &self.members {
            let field = names.iter().copied().find(|n| *n == key).or_else(|| {
                let k = fold_key(key);
                names.iter().zip(&folded).find(|(_, f)| **f == k).map(|(n, _)| *n)
            });
            if let Some(field) = field {
                found.retain(|(n, _, _)| *n != field);
                found.push((field, key.as_str(), value));
            }
        }
        Fields { found }
    }
}

/// The members of an object assigned to known field names (see [`GoObject::fields`]).
pub(crate) struct Fields<'a> {
    found: Vec<(&'static str, &'a str, &'a RawValue)>,
}

impl<'a> Fields<'a> {
    /// The raw value assigned to `field`, if any key selected it.
    pub(crate) fn get(&self, field: &str) -> Option<&'a RawValue> {
        self.found
            .iter()
            .find(|(n, _, _)| *n == field)
            .map(|(_, _, v)| *v)
    }

    /// The raw value unless absent or JSON `null`.
    pub(crate) fn non_null(&self, field: &str) -> Option<&'a RawValue> {
        self.get(field).filter(|v| !is_null(v))
    }
}

/// Go's case folding for field names: simple upper-then-lower mapping per character, so `K` (Kelvin
/// sign) matches `k` and `ſ` matches `s` as in Go.
pub(crate) fn fold_key(key: &str) -> String {
    key.chars()
        .map(|c| {
            let upper = single(c.to_uppercase()).unwrap_or(c);
            single(upper.to_lowercase()).unwrap_or(upper)
        })
        .collect()
}

fn single(mut it: impl Iterator<Item = char>) -> Option<char> {
    let first = it.next()?;
    if it.next().is_some() { None } else { Some(first) }
}

pub(crate) fn is_null(raw: &RawValue) -> bool {
    raw.get() == "null"
}

/// A Go `bool` field: `null` leaves it unset, anything but true/false is an error.
pub(crate) fn decode_bool(raw: &RawValue) -> Result<Option<bool>, String> {
    match raw.get() {
        "null" => Ok(None),
        "true" => Ok(Some(true)),
        "false" => Ok(Some(false)),
        _ => Err("expected true or false".to_string()),
    }
}

/// A Go `uint` field: only an unsigned integer literal (no sign, fraction or exponent) that fits.
pub(crate) fn decode_uint(raw: &RawValue) -> Result<Option<u64>, String> {
    let text = raw.get();
    if text == "null" {
        return Ok(None);
    }
    if !text.starts_with(|c: char| c.is_ascii_digit() || c == '-') {
        return Err("expected a number".to_string());
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err("expected a non-negative integer".to_string());
    }
    text.parse::<u64>()
        .map(Some)
        .map_err(|_| "number out of range".to_string())
}

/// A Go `int` field: only an integer literal (optional minus, no fraction or exponent) that fits.
pub(crate) fn decode_int(raw: &RawValue) -> Result<Option<i64>, String> {
    let text = raw.get();
    if text == "null" {
        return Ok(None);
    }
    if !text.starts_with(|c: char| c.is_ascii_digit() || c == '-') {
        return Err("expected a number".to_string());
    }
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err("expected an integer".to_string());
    }
    text.parse::<i64>()
        .map(Some)
        .map_err(|_| "number out of range".to_string())
}

/// A Go `string` field: `null` leaves it unset, anything but a JSON string is an error.
pub(crate) fn decode_string(raw: &RawValue) -> Result<Option<String>, String> {
    if is_null(raw) {
        return Ok(None);
    }
    if !raw.get().starts_with('"') {
        return Err("expected a string".to_string());
    }
    serde_json::from_str::<String>(raw.get())
        .map(Some)
        .map_err(|e| e.to_string())
}

/// A Go JSON string literal for `s`, exactly as `encoding/json` writes it (HTML-safe escaping).
pub fn go_json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        push_escaped_char(&mut out, c);
    }
    out.push('"');
    out
}

fn push_escaped_char(out: &mut String, c: char) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match c {
        '"' => out.push_str("\\\""),
        '\\' => out.push_str("\\\\"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\u{8}' => out.push_str("\\b"),
        '\u{c}' => out.push_str("\\f"),
        '\u{2028}' => out.push_str("\\u2028"),
        '\u{2029}' => out.push_str("\\u2029"),
        c if (c as u32) < 0x20 || c == '<' || c == '>' || c == '&' => {
            let b = c as u32 as u8;
            out.push_str("\\u00");
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xf)] as char);
        }
        c => out.push(c),
    }
}

/// What Go's encoder does to a `json.RawMessage`: drop insignificant whitespace and escape `<`, `>`,
/// `&`, U+2028, U+2029 inside strings. Every other byte is kept, so numbers and key order survive.
/// The input must already be valid JSON (it came through a JSON parser or from our own encoder).
pub(crate) fn go_compact(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in raw.chars() {
        if in_string {
            if escaped {
                escaped = false;
                out.push(c);
            } else if c == '\\' {
                escaped = true;
                out.push(c);
            } else if c == '"' {
                in_string = false;
                out.push(c);
            } else if matches!(c, '<' | '>' | '&' | '\u{2028}' | '\u{2029}') {
                push_escaped_char(&mut out, c);
            } else {
                out.push(c);
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    #[test]
    fn last_occurrence_of_any_case_wins() {
        let obj = GoObject::parse(r#"{"network":"a","Network":"b","NETWORK":"c","x":1}"#).unwrap();
        let f = obj.fields(&["Network"]);
        assert_eq!(f.get("Network").unwrap().get(), r#""c""#);
        let obj = GoObject::parse(r#"{"Network":"b","network":"a"}"#).unwrap();
        assert_eq!(obj.fields(&["Network"]).get("Network").unwrap().get(), r#""a""#);
    }

    #[test]
    fn fold_matches_go_special_cases() {
        assert_eq!(fold_key("BacKendType"), fold_key("backendtype"));
        assert_eq!(fold_key("\u{212A}ey"), "key");
        assert_eq!(fold_key("\u{17F}ubnet"), "subnet");
        assert_eq!(fold_key("PSK"), "psk");
    }

    #[test]
    fn non_objects_are_rejected() {
        for text in ["[]", "null", "\"x\"", "1", "{", "{} {}", ""] {
            assert!(GoObject::parse(text).is_err(), "{text}");
        }
    }

    #[test]
    fn typed_decoders_follow_go() {
        assert_eq!(decode_uint(&raw("24")), Ok(Some(24)));
        assert_eq!(decode_uint(&raw("null")), Ok(None));
        assert!(decode_uint(&raw("\"24\"")).is_err());
        assert!(decode_uint(&raw("-1")).is_err());
        assert!(decode_uint(&raw("24.0")).is_err());
        assert!(decode_uint(&raw("1e2")).is_err());
        assert!(decode_uint(&raw("99999999999999999999999")).is_err());
        assert_eq!(decode_int(&raw("-5")), Ok(Some(-5)));
        assert!(decode_int(&raw("1.5")).is_err());
        assert!(decode_int(&raw("true")).is_err());
        assert_eq!(decode_bool(&raw("true")), Ok(Some(true)));
        assert!(decode_bool(&raw("\"true\"")).is_err());
        assert_eq!(decode_string(&raw(r#""a\u0062""#)), Ok(Some("ab".to_string())));
        assert!(decode_string(&raw("5")).is_err());
    }

    #[test]
    fn go_string_escaping() {
        assert_eq!(go_json_string("a<b>&c"), r#""a\u003cb\u003e\u0026c""#);
        assert_eq!(
            go_json_string("q\"\\\n\t\r\u{1}\u{8}\u{c}"),
            r#""q\"\\\n\t\r\u0001\b\f""#
        );
        assert_eq!(
            go_json_string("\u{2028}\u{2029}é\u{7f}"),
            "\"\\u2028\\u2029é\u{7f}\""
        );
    }

    #[test]
    fn compact_keeps_tokens_and_escapes_html() {
        assert_eq!(
            go_compact("{ \"VNI\" : 1,\n \"VtepMAC\": \"a b\" }"),
            r#"{"VNI":1,"VtepMAC":"a b"}"#
        );
        assert_eq!(
            go_compact(r#"{"c":"x<y","n":1.0e3,"e":"\"<"}"#),
            r#"{"c":"x\u003cy","n":1.0e3,"e":"\"\u003c"}"#
        );
    }
}
