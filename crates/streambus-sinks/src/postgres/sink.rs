//! The `postgres` sink itself.

use std::error::Error as StdError;
use std::time::{Duration, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::{BufMut, BytesMut};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures::pin_mut;
use serde::de::IgnoredAny;
use streambus_types::ConfigError;
use tokio_postgres::NoTls;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{IsNull, ToSql, Type};

use super::config::{PostgresConfig, valid_identifier};
use crate::record::Record;
use crate::sink::{Sink, SinkError, SinkSpec};

const COLUMNS: &str = "time, topic, sequence, message_id, headers, payload_json, payload_bytes";
const TYPES: [Type; 7] = [
    Type::TIMESTAMPTZ,
    Type::TEXT,
    Type::INT8,
    Type::TEXT,
    Type::JSONB,
    Type::JSONB,
    Type::BYTEA,
];

/// Writes records to a PostgreSQL table with binary `COPY`.
pub struct PostgresSink {
    config: PostgresConfig,
    /// `"schema"."table"` or `"table"`, quoted.
    table: String,
    /// Name of the per-connection staging table (idempotent mode).
    stage: String,
    pool: Pool,
}

impl std::fmt::Debug for PostgresSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSink").field("table", &self.table).finish()
    }
}

pub(crate) fn factory(spec: &SinkSpec) -> Result<Box<dyn Sink>, ConfigError> {
    let config: PostgresConfig = spec.options()?;
    Ok(Box::new(
        PostgresSink::new(config).map_err(|(field, reason)| spec.error(field, reason))?,
    ))
}

/// A `jsonb` value from JSON text already known to be valid (binary format: version 1,
/// then the text).
#[derive(Debug)]
struct Jsonb<'a>(&'a [u8]);

impl ToSql for Jsonb<'_> {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        out.put_u8(1);
        out.extend_from_slice(self.0);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }

    fn to_sql_checked(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        if !Self::accepts(ty) {
            return Err(format!("jsonb value for a column of type {ty}").into());
        }
        self.to_sql(ty, out)
    }
}

/// How a PostgreSQL error affects the batch.
fn classify(e: &tokio_postgres::Error, what: &str) -> SinkError {
    let Some(db) = e.as_db_error() else {
        // Connection refused, reset, closed, timed out: the pool reconnects.
        return SinkError::retryable(format!("postgres {what}: {e}"));
    };
    let message = format!("postgres {what}: {}: {}", db.code().code(), db.message());
    let class = &db.code().code()[..2];
    match class {
        // Data exceptions and integrity violations are about one row.
        "22" | "23" => {
            let row = db.where_().and_then(copy_line);
            match row {
                Some(line) if line > 0 => SinkError::poison(line - 1, message),
                _ => SinkError::poison_somewhere(message),
            }
        }
        // Connection, transaction rollback, resources, operator intervention, system.
        "08" | "40" | "53" | "57" | "58" => SinkError::retryable(message),
        _ => SinkError::fatal(message),
    }
}

/// The row number in a `COPY` error context such as
/// `JSON data, line 1: …\nCOPY t, line 7, column payload_json: …` (7 here).
fn copy_line(context: &str) -> Option<usize> {
    let copy = context.lines().find(|l| l.starts_with("COPY "))?;
    let rest = copy.split(", line ").nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

fn pool_error(e: impl std::fmt::Display) -> SinkError {
    SinkError::retryable(format!("postgres connection: {e}"))
}

impl PostgresSink {
    /// A sink for `config`; checks it without connecting. Errors name the field.
    pub fn new(config: PostgresConfig) -> Result<Self, (&'static str, String)> {
        let parts: Vec<&str> = config.table.split('.').collect();
        if parts.len() > 2 || !parts.iter().all(|p| valid_identifier(p)) {
            return Err((
                "table",
                format!(
                    "{:?} is not a table name (identifier or schema.identifier)",
                    config.table
                ),
            ));
        }
        if config.pool_size == 0 {
            return Err(("pool_size", "must be greater than zero".into()));
        }
        if config.connect_timeout_ms == 0 {
            return Err(("connect_timeout_ms", "must be greater than zero".into()));
        }
        let mut pg: tokio_postgres::Config = config
            .url
            .parse()
            .map_err(|e| ("url", format!("not a PostgreSQL connection string: {e}")))?;
        let timeout = Duration::from_millis(config.connect_timeout_ms);
        pg.connect_timeout(timeout);
        if pg.get_application_name().is_none() {
            pg.application_name("streambus");
        }
        let manager = Manager::from_config(
            pg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .build()
            .map_err(|e| ("pool_size", e.to_string()))?;
        let table = parts.iter().map(|p| format!("\"{p}\"")).collect::<Vec<_>>().join(".");
        let stage = format!("\"streambus_stage_{}\"", parts.join("_"));
        Ok(PostgresSink {
            config,
            table,
            stage,
            pool,
        })
    }

    async fn copy(&self, batch: &[Record]) -> Result<(), SinkError> {
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let tx = client.transaction().await.map_err(|e| classify(&e, "begin"))?;
        let target = if self.config.idempotent {
            tx.batch_execute(&format!(
                "CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
                self.stage, self.table
            ))
            .await
            .map_err(|e| classify(&e, "staging table"))?;
            &self.stage
        } else {
            &self.table
        };
        let sink = tx
            .copy_in(&format!("COPY {target} ({COLUMNS}) FROM STDIN (FORMAT binary)"))
            .await
            .map_err(|e| classify(&e, "copy"))?;
        let writer = BinaryCopyInWriter::new(sink, &TYPES);
        pin_mut!(writer);
        for r in batch {
            let time = UNIX_EPOCH + Duration::from_nanos(r.timestamp_ns);
            let headers = (!r.headers.is_empty()).then(|| {
                let map: serde_json::Map<String, serde_json::Value> = r
                    .headers
                    .as_slice()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone().into()))
                    .collect();
                serde_json::Value::Object(map).to_string()
            });
            let is_json = serde_json::from_slice::<IgnoredAny>(&r.payload).is_ok();
            let json = is_json.then(|| Jsonb(&r.payload));
            let bytes = (!is_json).then_some(&r.payload[..]);
            let header_json = headers.as_deref().map(|h| Jsonb(h.as_bytes()));
            writer
                .as_mut()
                .write(&[
                    &time,
                    &r.topic.as_str(),
                    &(r.sequence as i64),
                    &r.message_id.as_str(),
                    &header_json,
                    &json,
                    &bytes,
                ])
                .await
                .map_err(|e| classify(&e, "copy"))?;
        }
        writer.finish().await.map_err(|e| classify(&e, "copy"))?;
        if self.config.idempotent {
            tx.batch_execute(&format!(
                "INSERT INTO {} ({COLUMNS}) SELECT {COLUMNS} FROM {} ON CONFLICT (message_id) DO NOTHING",
                self.table, self.stage
            ))
            .await
            .map_err(|e| classify(&e, "insert"))?;
        }
        tx.commit().await.map_err(|e| classify(&e, "commit"))
    }
}

#[async_trait]
impl Sink for PostgresSink {
    async fn open(&mut self) -> Result<(), SinkError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let t = &self.table;
        let index = self.config.table.replace('.', "_");
        let mut ddl = format!(
            "CREATE TABLE IF NOT EXISTS {t} (
                time timestamptz NOT NULL,
                topic text NOT NULL,
                sequence bigint NOT NULL,
                message_id text NOT NULL,
                headers jsonb,
                payload_json jsonb,
                payload_bytes bytea
            );
            CREATE INDEX IF NOT EXISTS \"{index}_time_idx\" ON {t} (time);"
        );
        if self.config.idempotent {
            ddl.push_str(&format!(
                "CREATE UNIQUE INDEX IF NOT EXISTS \"{index}_message_id_key\" ON {t} (message_id);"
            ));
        }
        client
            .batch_execute(&ddl)
            .await
            .map_err(|e| match classify(&e, "create table") {
                // Two sinks creating the same table at once: try again.
                err if e.as_db_error().is_some_and(|d| *d.code() == SqlState::UNIQUE_VIOLATION) => {
                    SinkError::retryable(err.message)
                }
                err => err,
            })
    }

    async fn write(&mut self, batch: &[Record]) -> Result<(), SinkError> {
        self.copy(batch).await
    }

    async fn close(&mut self) -> Result<(), SinkError> {
        self.pool.close();
        Ok(())
    }

    async fn health(&mut self) -> Result<(), SinkError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        client
            .simple_query("SELECT 1")
            .await
            .map(|_| ())
            .map_err(|e| classify(&e, "health"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The row comes from the COPY context, not from a nested JSON line number.
    #[test]
    fn copy_line_numbers() {
        let ctx = "JSON data, line 1: {\"bad\":\"\\u0000...\nCOPY \"t\", line 7, column payload_json: \"x\"";
        assert_eq!(copy_line(ctx), Some(7));
        assert_eq!(copy_line("COPY t, line 12"), Some(12));
        assert_eq!(copy_line("SQL statement"), None);
    }
}
