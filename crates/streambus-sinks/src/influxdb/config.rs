//! Options of the `influxdb` sink.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::template::Template;

/// Which InfluxDB write API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InfluxApi {
    /// InfluxDB 1.x: `POST /write?db=…`.
    V1,
    /// InfluxDB 2.x (and 1.8's compatibility API): `POST /api/v2/write?org=…&bucket=…`.
    V2,
}

/// Options of the `influxdb` sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InfluxDbConfig {
    /// Base URL of the server (`http://host:8086`).
    pub url: String,
    /// The write API.
    #[serde(default = "default_api")]
    pub api: InfluxApi,
    /// v1: the database.
    #[serde(default)]
    pub database: String,
    /// v1: the retention policy; empty is the database's default.
    #[serde(default)]
    pub retention_policy: String,
    /// v1: create `database` when the sink opens.
    #[serde(default)]
    pub create_database: bool,
    /// v1: user name, when authentication is on.
    #[serde(default)]
    pub username: String,
    /// v1: password for `username`.
    #[serde(default)]
    pub password: String,
    /// v2: the organization.
    #[serde(default)]
    pub org: String,
    /// v2: the bucket.
    #[serde(default)]
    pub bucket: String,
    /// v2: the API token.
    #[serde(default)]
    pub token: String,
    /// The measurement of each point, from the topic.
    #[serde(default = "default_measurement")]
    pub measurement: Template,
    /// Tags of each point: key → template over the topic.
    #[serde(default = "default_tags")]
    pub tags: BTreeMap<String, Template>,
    /// How long one write may take.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_api() -> InfluxApi {
    InfluxApi::V1
}

fn default_measurement() -> Template {
    Template::parse("{1}").expect("a valid template")
}

fn default_tags() -> BTreeMap<String, Template> {
    BTreeMap::from([(
        "topic".to_owned(),
        Template::parse("{topic}").expect("a valid template"),
    )])
}

fn default_timeout_ms() -> u64 {
    10_000
}

impl InfluxDbConfig {
    /// Checks what serde cannot: `(field, reason)` for the first problem.
    pub(crate) fn validate(&self) -> Result<(), (&'static str, String)> {
        match reqwest::Url::parse(&self.url) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            Ok(u) => return Err(("url", format!("scheme {:?} is not http or https", u.scheme()))),
            Err(e) => return Err(("url", format!("not a URL: {e}"))),
        }
        match self.api {
            InfluxApi::V1 if self.database.is_empty() => {
                return Err(("database", "the v1 API writes to a database: name it".into()));
            }
            InfluxApi::V2 if self.org.is_empty() => return Err(("org", "the v2 API needs an organization".into())),
            InfluxApi::V2 if self.bucket.is_empty() => return Err(("bucket", "the v2 API needs a bucket".into())),
            InfluxApi::V2 if self.token.is_empty() => return Err(("token", "the v2 API needs a token".into())),
            InfluxApi::V2 if self.create_database => {
                return Err(("create_database", "only the v1 API creates databases".into()));
            }
            _ => {}
        }
        if self.tags.keys().any(|k| k.is_empty()) {
            return Err(("tags", "a tag key cannot be empty".into()));
        }
        if self.password.is_empty() != self.username.is_empty() && !self.password.is_empty() {
            return Err(("username", "a password needs a user name".into()));
        }
        if self.timeout_ms == 0 {
            return Err(("timeout_ms", "must be greater than zero".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    fn build(options: serde_json::Value) -> Result<(), String> {
        crate::sink::field_refused(super::super::factory, "tsdb", options)
    }

    /// Bad options are refused with the field named.
    #[test]
    fn errors_name_the_field() {
        use serde_json::json;
        let ok = json!({ "url": "http://127.0.0.1:8086", "database": "d" });
        assert_eq!(build(ok), Ok(()));
        assert_eq!(
            build(json!({ "url": "ftp://x", "database": "d" })),
            Err("sinks.tsdb.url".into())
        );
        assert_eq!(build(json!({ "url": "http://x" })), Err("sinks.tsdb.database".into()));
        assert_eq!(
            build(json!({ "url": "http://x", "api": "v2", "org": "o", "bucket": "b" })),
            Err("sinks.tsdb.token".into())
        );
        assert_eq!(
            build(json!({ "url": "http://x", "api": "v3" })),
            Err("sinks.tsdb.api".into())
        );
        assert_eq!(
            build(json!({ "url": "http://x", "database": "d", "tags": { "dev": "{x}" } })),
            Err("sinks.tsdb.tags.dev".into())
        );
        let v2 = json!({ "url": "http://x", "api": "v2", "org": "o", "bucket": "b", "token": "t" });
        assert_eq!(build(v2), Ok(()));
    }
}
