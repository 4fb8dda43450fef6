//! A record as one InfluxDB line-protocol point (the mapping rule of
//! [`crate::influxdb`]), with line protocol's escaping.

use std::fmt::Write as _;

use serde_json::Value;

use crate::record::Record;

/// One field value.
#[derive(Debug, Clone, PartialEq)]
enum Field {
    Float(f64),
    Bool(bool),
    Text(String),
}

/// Appends `s` with `\` before each of `special` (and newlines written as `\n`).
fn escape_into(out: &mut String, s: &str, special: &[char]) {
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if special.contains(&c) => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
}

/// The fields of a payload, or why it has none.
fn fields(payload: &[u8]) -> Result<Vec<(String, Field)>, String> {
    let text = std::str::from_utf8(payload).map_err(|_| "the payload is not UTF-8 text".to_owned())?;
    let mut out = Vec::new();
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => flatten("", &map, &mut out),
        Ok(Value::Number(n)) => out.push(("value".to_owned(), Field::Float(n.as_f64().unwrap_or(0.0)))),
        Ok(Value::Bool(b)) => out.push(("value".to_owned(), Field::Bool(b))),
        Ok(Value::String(s)) => out.push(("value".to_owned(), Field::Text(s))),
        Ok(Value::Null | Value::Array(_)) => {}
        Err(_) => match text.trim().parse::<f64>() {
            Ok(f) if f.is_finite() => out.push(("value".to_owned(), Field::Float(f))),
            _ => out.push(("value".to_owned(), Field::Text(text.to_owned()))),
        },
    }
    if out.is_empty() {
        return Err("the payload has no field for a point (an empty object, null or only arrays)".to_owned());
    }
    Ok(out)
}

/// The members of `map` as fields, nested objects as `parent.child`.
fn flatten(prefix: &str, map: &serde_json::Map<String, Value>, out: &mut Vec<(String, Field)>) {
    for (key, value) in map {
        let name = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            Value::Number(n) => {
                if let Some(f) = n.as_f64().filter(|f| f.is_finite()) {
                    out.push((name, Field::Float(f)));
                }
            }
            Value::Bool(b) => out.push((name, Field::Bool(*b))),
            Value::String(s) => out.push((name, Field::Text(s.clone()))),
            Value::Object(inner) => flatten(&name, inner, out),
            Value::Null | Value::Array(_) => {}
        }
    }
}

/// The line of `record` as a point of `measurement` with `tags` (empty values left out),
/// or why it cannot be one.
pub(crate) fn line(record: &Record, measurement: &str, tags: &[(&str, String)]) -> Result<String, String> {
    if measurement.is_empty() {
        return Err("the measurement template made an empty name".to_owned());
    }
    let fields = fields(&record.payload)?;
    let mut out = String::with_capacity(64 + record.payload.len());
    escape_into(&mut out, measurement, &[',', ' ', '\\']);
    for (key, value) in tags {
        if value.is_empty() {
            continue;
        }
        out.push(',');
        escape_into(&mut out, key, &[',', '=', ' ', '\\']);
        out.push('=');
        escape_into(&mut out, value, &[',', '=', ' ', '\\']);
    }
    for (i, (key, value)) in fields.iter().enumerate() {
        out.push(if i == 0 { ' ' } else { ',' });
        escape_into(&mut out, key, &[',', '=', ' ', '\\']);
        out.push('=');
        match value {
            // `{:?}` keeps a decimal point or an exponent: always a float to InfluxDB.
            Field::Float(f) => {
                let _ = write!(out, "{f:?}");
            }
            Field::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Field::Text(s) => {
                out.push('"');
                escape_into(&mut out, s, &['"', '\\']);
                out.push('"');
            }
        }
    }
    let _ = write!(out, " {}", record.timestamp_ns);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use proptest::prelude::*;
    use streambus_types::{Headers, Topic};

    use super::*;

    fn record(payload: &[u8]) -> Record {
        Record {
            topic: Topic::new("sensors.dev1.env").unwrap(),
            sequence: 7,
            timestamp_ns: 1_700_000_000_000_000_001,
            message_id: "m".into(),
            headers: Headers::default(),
            payload: Bytes::copy_from_slice(payload),
            retain: false,
        }
    }

    /// The documented rule, field by field, with escaping.
    #[test]
    fn maps_json_objects() {
        let r = record(br#"{"t":21.5,"n":3,"ok":true,"site":"plant \"7\"","env":{"h":40},"list":[1],"none":null}"#);
        let tags = [("device", "dev 1".to_owned()), ("empty", String::new())];
        let l = line(&r, "sensors,x", &tags).unwrap();
        assert_eq!(
            l,
            r#"sensors\,x,device=dev\ 1 env.h=40.0,n=3.0,ok=true,site="plant \"7\"",t=21.5 1700000000000000001"#
        );
    }

    /// Scalars and text are one `value` field; what makes no field is refused.
    #[test]
    fn scalars_text_and_refusals() {
        assert_eq!(
            line(&record(b"21.5"), "m", &[]).unwrap(),
            "m value=21.5 1700000000000000001"
        );
        assert_eq!(
            line(&record(b" 4 "), "m", &[]).unwrap(),
            "m value=4.0 1700000000000000001"
        );
        assert_eq!(
            line(&record(b"on"), "m", &[]).unwrap(),
            r#"m value="on" 1700000000000000001"#
        );
        assert_eq!(
            line(&record(b"\"a\\nb\""), "m", &[]).unwrap(),
            r#"m value="a\nb" 1700000000000000001"#
        );
        assert!(line(&record(b"{}"), "m", &[]).is_err());
        assert!(line(&record(b"[1,2]"), "m", &[]).is_err());
        assert!(line(&record(&[0xff, 0xfe]), "m", &[]).is_err());
        assert!(line(&record(b"1"), "", &[]).is_err());
    }

    proptest! {
        /// Any payload and tag text gives one line (no raw newline) or a refusal.
        #[test]
        fn one_line_or_a_refusal(payload in proptest::collection::vec(any::<u8>(), 0..64), tag in "\\PC{0,12}") {
            if let Ok(l) = line(&record(&payload), "m", &[("k", tag)]) {
                prop_assert!(!l.contains('\n'));
                prop_assert!(l.ends_with(" 1700000000000000001"));
            }
        }
    }
}
