//! The JSON value `keel-bench --json` builds its report from, written by serde_json.
//!
//! What always holds: [`Json::render`] writes valid JSON (RFC 8259; serde_json escapes the
//! strings), non-finite numbers become `null`, object keys keep their insertion order
//! (serde_json's `preserve_order`).

use serde_json::{Map, Number, Value};

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
        let mut out = serde_json::to_string_pretty(&self.to_value())
            .expect("a serde_json Value always serializes");
        out.push('\n');
        out
    }

    fn to_value(&self) -> Value {
        match self {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(*b),
            Json::Int(i) => Value::Number((*i).into()),
            // None for NaN and the infinities, which JSON cannot hold.
            Json::Num(n) => Number::from_f64(*n).map_or(Value::Null, Value::Number),
            Json::Str(s) => Value::String(s.clone()),
            Json::Arr(items) => Value::Array(items.iter().map(Json::to_value).collect()),
            Json::Obj(pairs) => Value::Object(
                pairs
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_value()))
                    .collect::<Map<String, Value>>(),
            ),
        }
    }
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
    fn non_finite_numbers_are_null_and_others_are_json_numbers() {
        assert_eq!(Json::Num(f64::NAN).render(), "null\n");
        assert_eq!(Json::Num(f64::INFINITY).render(), "null\n");
        assert_eq!(Json::Num(1e21).render(), "1e+21\n");
        assert_eq!(Json::num(0.000_4, 3).render(), "0.0\n");
    }
}
