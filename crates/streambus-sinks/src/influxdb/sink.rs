//! [`InfluxDbSink`]: the writer (see the module doc of [`crate::influxdb`]).

use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;
use streambus_types::ConfigError;

use super::config::{InfluxApi, InfluxDbConfig};
use super::line::line;
use crate::record::Record;
use crate::sink::{Sink, SinkError, SinkSpec};

/// Writes records to InfluxDB as line protocol.
pub struct InfluxDbSink {
    /// The options.
    config: InfluxDbConfig,
    /// The HTTP client (a connection pool; timeouts from `timeout_ms`).
    http: reqwest::Client,
    /// Where a batch is posted, with its query string.
    write_url: reqwest::Url,
}

pub(crate) fn factory(spec: &SinkSpec) -> Result<Box<dyn Sink>, ConfigError> {
    let config: InfluxDbConfig = spec.options()?;
    config.validate().map_err(|(field, reason)| spec.error(field, reason))?;
    InfluxDbSink::new(config)
        .map(|s| Box::new(s) as Box<dyn Sink>)
        .map_err(|(field, reason)| spec.error(field, reason))
}

impl InfluxDbSink {
    /// A sink for `config`; `(field, reason)` when it cannot be made.
    pub fn new(config: InfluxDbConfig) -> Result<InfluxDbSink, (&'static str, String)> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms))
            .build()
            .map_err(|e| ("url", format!("cannot make an HTTP client: {e}")))?;
        let base = reqwest::Url::parse(&config.url).map_err(|e| ("url", e.to_string()))?;
        let mut write_url = base.clone();
        match config.api {
            InfluxApi::V1 => {
                write_url.set_path(&format!("{}/write", base.path().trim_end_matches('/')));
                let mut q = write_url.query_pairs_mut();
                q.append_pair("db", &config.database).append_pair("precision", "ns");
                if !config.retention_policy.is_empty() {
                    q.append_pair("rp", &config.retention_policy);
                }
                if !config.username.is_empty() {
                    q.append_pair("u", &config.username).append_pair("p", &config.password);
                }
            }
            InfluxApi::V2 => {
                write_url.set_path(&format!("{}/api/v2/write", base.path().trim_end_matches('/')));
                write_url
                    .query_pairs_mut()
                    .append_pair("org", &config.org)
                    .append_pair("bucket", &config.bucket)
                    .append_pair("precision", "ns");
            }
        }
        Ok(InfluxDbSink {
            config,
            http,
            write_url,
        })
    }

    /// The line of `record`, or why it cannot be a point.
    fn point(&self, record: &Record) -> Result<String, String> {
        let measurement = self
            .config
            .measurement
            .render(&record.topic)
            .map_err(|e| e.to_string())?;
        let tags = self
            .config
            .tags
            .iter()
            .map(|(k, t)| t.render(&record.topic).map(|v| (k.as_str(), v)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        line(record, &measurement, &tags)
    }

    /// A request with the API's authentication.
    fn post(&self, url: reqwest::Url) -> reqwest::RequestBuilder {
        let request = self.http.post(url);
        match self.config.api {
            InfluxApi::V2 => request.header("Authorization", format!("Token {}", self.config.token)),
            InfluxApi::V1 => request,
        }
    }
}

/// What a refused write asks the runtime to do; `lines` are the batch's lines.
fn classify(status: StatusCode, body: &str, lines: &[String]) -> SinkError {
    let message = match serde_json::from_str::<serde_json::Value>(body) {
        Ok(v) => v["error"].as_str().or(v["message"].as_str()).unwrap_or(body).to_owned(),
        Err(_) => body.trim().to_owned(),
    };
    let reason = format!("influxdb {}: {message}", status.as_u16());
    match status {
        StatusCode::BAD_REQUEST => {
            // "unable to parse '<line>': <why>" names the line; anything else (a field
            // type conflict, a point outside the retention policy) does not.
            let named = message
                .split("unable to parse '")
                .nth(1)
                .and_then(|rest| rest.split("': ").next())
                .and_then(|text| lines.iter().position(|l| l == text));
            match named {
                Some(i) => SinkError::poison(i, reason),
                None => SinkError::poison_somewhere(reason),
            }
        }
        StatusCode::PAYLOAD_TOO_LARGE => SinkError::poison_somewhere(reason),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND => SinkError::fatal(reason),
        _ => SinkError::retryable(reason),
    }
}

#[async_trait]
impl Sink for InfluxDbSink {
    async fn open(&mut self) -> Result<(), SinkError> {
        if self.config.api == InfluxApi::V1 && self.config.create_database {
            let mut url = reqwest::Url::parse(&self.config.url).map_err(|e| SinkError::fatal(e.to_string()))?;
            url.set_path(&format!("{}/query", url.path().trim_end_matches('/')));
            let database = self.config.database.replace('\\', "\\\\").replace('"', "\\\"");
            let mut form = vec![("q", format!("CREATE DATABASE \"{database}\""))];
            if !self.config.username.is_empty() {
                form.push(("u", self.config.username.clone()));
                form.push(("p", self.config.password.clone()));
            }
            let response = self
                .post(url)
                .form(&form)
                .send()
                .await
                .map_err(|e| SinkError::retryable(format!("influxdb: {e}")))?;
            let status = response.status();
            if !status.is_success() {
                let body = response.text().await.unwrap_or_default();
                return Err(classify(status, &body, &[]));
            }
        }
        Ok(())
    }

    async fn write(&mut self, batch: &[Record]) -> Result<(), SinkError> {
        let lines = batch
            .iter()
            .enumerate()
            .map(|(i, r)| self.point(r).map_err(|e| SinkError::poison(i, e)))
            .collect::<Result<Vec<_>, _>>()?;
        let response = self
            .post(self.write_url.clone())
            .body(lines.join("\n"))
            .send()
            .await
            .map_err(|e| SinkError::retryable(format!("influxdb: {e}")))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = response.text().await.unwrap_or_default();
        Err(classify(status, &body, &lines))
    }

    async fn health(&mut self) -> Result<(), SinkError> {
        let mut url = self.write_url.clone();
        url.set_query(None);
        url.set_path("/ping");
        self.http
            .get(url)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| SinkError::retryable(format!("influxdb: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refusal naming its line is a poison record at that line; one that does not is
    /// found by splitting; authentication and missing databases are fatal; the rest is
    /// retried.
    #[test]
    fn refusals_are_classified() {
        let lines = vec!["a x=1 1".to_owned(), "b x=oops 2".to_owned()];
        let body = r#"{"error":"partial write: unable to parse 'b x=oops 2': invalid boolean dropped=1"}"#;
        assert_eq!(
            classify(StatusCode::BAD_REQUEST, body, &lines).kind,
            crate::SinkErrorKind::Poison { index: Some(1) }
        );
        let body = r#"{"error":"partial write: field type conflict: input field \"t\" dropped=1"}"#;
        assert_eq!(
            classify(StatusCode::BAD_REQUEST, body, &lines).kind,
            crate::SinkErrorKind::Poison { index: None }
        );
        assert_eq!(
            classify(StatusCode::NOT_FOUND, "{}", &lines).kind,
            crate::SinkErrorKind::Fatal
        );
        assert!(classify(StatusCode::SERVICE_UNAVAILABLE, "busy", &lines).is_retryable());
    }

    /// Both APIs post where their server expects, with their parameters.
    #[test]
    fn write_urls() {
        let v1: InfluxDbConfig = serde_json::from_value(serde_json::json!({
            "url": "http://h:8086/", "database": "d b", "retention_policy": "rp", "username": "u", "password": "p"
        }))
        .unwrap();
        let sink = InfluxDbSink::new(v1).unwrap();
        assert_eq!(
            sink.write_url.as_str(),
            "http://h:8086/write?db=d+b&precision=ns&rp=rp&u=u&p=p"
        );
        let v2: InfluxDbConfig = serde_json::from_value(serde_json::json!({
            "url": "http://h:8086/base", "api": "v2", "org": "o", "bucket": "b", "token": "t"
        }))
        .unwrap();
        let sink = InfluxDbSink::new(v2).unwrap();
        assert_eq!(
            sink.write_url.as_str(),
            "http://h:8086/base/api/v2/write?org=o&bucket=b&precision=ns"
        );
    }
}
