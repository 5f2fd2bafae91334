//! A small JSON value and its writer, for `keel-bench --json` (keel-node has no serde_json).
//!
//! What always holds: [`Json::render`] writes valid JSON (RFC 8259): strings are escaped,
//! non-finite numbers become `null`, object keys keep their insertion order.

use std::fmt::Write;

#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Int(i64),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    /// An object from `(key, value)` pairs.
    pub fn obj<K: Into<String>>(pairs: impl IntoIterator<Item = (K, Json)>) -> Json {
        Json::Obj(pairs.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    pub fn str(s: impl Into<String>) -> Json {
        Json::Str(s.into())
    }

    /// A number rounded to `decimals` places (figures are measurements, not exact values).
    pub fn num(value: f64, decimals: i32) -> Json {
        let scale = 10f64.powi(decimals);
        Json::Num((value * scale).round() / scale)
    }

    /// `None` as `null`.
    pub fn opt(value: Option<Json>) -> Json {
        value.unwrap_or(Json::Null)
    }

    /// Indented by two spaces per level, with a final newline.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.write(&mut out, 0);
        out.push('\n');
        out
    }

    fn write(&self, out: &mut String, depth: usize) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Json::Num(n) if n.is_finite() => {
                // Rust's Display for f64 never uses an exponent: always a JSON number.
                let _ = write!(out, "{n}");
            }
            Json::Num(_) => out.push_str("null"),
            Json::Str(s) => write_string(out, s),
            Json::Arr(items) if items.is_empty() => out.push_str("[]"),
            Json::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    newline(out, depth + 1);
                    item.write(out, depth + 1);
                }
                newline(out, depth);
                out.push(']');
            }
            Json::Obj(pairs) if pairs.is_empty() => out.push_str("{}"),
            Json::Obj(pairs) => {
                out.push('{');
                for (i, (key, value)) in pairs.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    newline(out, depth + 1);
                    write_string(out, key);
                    out.push_str(": ");
                    value.write(out, depth + 1);
                }
                newline(out, depth);
                out.push('}');
            }
        }
    }
}

fn newline(out: &mut String, depth: usize) {
    out.push('\n');
    for _ in 0..depth {
        out.push_str("  ");
    }
}

fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_nested_values_indented() {
        let v = Json::obj([
            ("name", Json::str("produce acks=all")),
            ("records", Json::Int(12)),
            ("mb_per_s", Json::num(123.456_78, 2)),
            ("ok", Json::Bool(true)),
            ("p99_ms", Json::Null),
            ("list", Json::Arr(vec![Json::Int(1), Json::Int(2)])),
            ("empty", Json::Arr(vec![])),
            ("none", Json::obj(Vec::<(String, Json)>::new())),
        ]);
        let expected = "{\n  \"name\": \"produce acks=all\",\n  \"records\": 12,\n  \
                        \"mb_per_s\": 123.46,\n  \"ok\": true,\n  \"p99_ms\": null,\n  \
                        \"list\": [\n    1,\n    2\n  ],\n  \"empty\": [],\n  \"none\": {}\n}\n";
        assert_eq!(v.render(), expected);
    }

    #[test]
    fn strings_are_escaped() {
        let v = Json::str("a\"b\\c\nd\u{1}é");
        assert_eq!(v.render(), "\"a\\\"b\\\\c\\nd\\u0001é\"\n");
    }

    #[test]
    fn non_finite_numbers_are_null_and_large_ones_have_no_exponent() {
        assert_eq!(Json::Num(f64::NAN).render(), "null\n");
        assert_eq!(Json::Num(f64::INFINITY).render(), "null\n");
        assert_eq!(Json::Num(1e21).render(), "1000000000000000000000\n");
        assert_eq!(Json::num(0.000_4, 3).render(), "0\n");
    }
}
