//! The JSON Lines form of a record, shared by the `file` and `stdout` sinks.
//!
//! One object per line: `timestamp_ns`, `topic`, `sequence`, `message_id`, `headers`
//! (an array of `[name, value]` pairs, omitted when empty) and the payload as `payload`
//! when it is JSON (kept as is, compacted if it spans lines), else as `payload_text`
//! when it is UTF-8, else as `payload_base64`.

use base64::Engine;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::record::Record;

#[derive(Serialize)]
struct Line<'a> {
    timestamp_ns: u64,
    topic: &'a str,
    sequence: u64,
    message_id: &'a str,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    headers: &'a [(String, String)],
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<Payload<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_base64: Option<String>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Payload<'a> {
    Raw(&'a RawValue),
    Parsed(serde_json::Value),
}

/// Appends the record's JSON line, newline included, to `out`.
pub fn json_line(record: &Record, out: &mut Vec<u8>) {
    let text = std::str::from_utf8(&record.payload).ok();
    let json = text.and_then(|t| {
        let raw: &RawValue = serde_json::from_str(t).ok()?;
        if t.contains(['\n', '\r']) {
            serde_json::from_str(t).ok().map(Payload::Parsed)
        } else {
            Some(Payload::Raw(raw))
        }
    });
    let is_json = json.is_some();
    let line = Line {
        timestamp_ns: record.timestamp_ns,
        topic: record.topic.as_str(),
        sequence: record.sequence,
        message_id: &record.message_id,
        headers: record.headers.as_slice(),
        payload: json,
        payload_text: text.filter(|_| !is_json),
        payload_base64: text
            .is_none()
            .then(|| base64::engine::general_purpose::STANDARD.encode(&record.payload)),
    };
    serde_json::to_writer(&mut *out, &line).expect("serializing to a Vec cannot fail");
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use streambus_types::Topic;

    use super::*;

    fn line(payload: &'static [u8]) -> serde_json::Value {
        let r = Record {
            topic: Topic::new("a.b").unwrap(),
            sequence: 3,
            timestamp_ns: 42,
            message_id: "m".into(),
            headers: vec![("k".to_owned(), "v".to_owned())].into(),
            payload: Bytes::from_static(payload),
            retain: false,
        };
        let mut out = Vec::new();
        json_line(&r, &mut out);
        assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1, "one line");
        assert_eq!(out.last(), Some(&b'\n'));
        serde_json::from_slice(&out).unwrap()
    }

    /// JSON payloads stay JSON (even multi-line ones, on one line), text stays text,
    /// binary becomes base64; the metadata is all there.
    #[test]
    fn payload_forms() {
        let v = line(br#"{"t": 21.5}"#);
        assert_eq!(v["payload"]["t"], 21.5);
        assert_eq!((v["topic"].as_str(), v["sequence"].as_u64()), (Some("a.b"), Some(3)));
        assert_eq!(v["headers"][0][1], "v");
        assert_eq!(line(b"{\n \"a\": [1,\n2]\n}")["payload"]["a"][1], 2);
        assert_eq!(line(b"hello")["payload_text"], "hello");
        assert_eq!(line(b"\xff\x00")["payload_base64"], "/wA=");
        assert!(line(b"hello").get("payload").is_none());
    }
}
