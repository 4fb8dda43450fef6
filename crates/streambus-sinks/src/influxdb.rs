//! The `influxdb` sink: line protocol over HTTP, InfluxDB 1.x `/write` or the 2.x API.
//!
//! ```toml
//! [[sinks]]
//! name = "tsdb"
//! type = "influxdb"
//! topics = ["sensors.>"]
//! url = "http://127.0.0.1:8086"
//! api = "v1"                       # v1: /write?db= | v2: /api/v2/write?org=&bucket=
//! database = "telemetry"           # v1
//! retention_policy = ""            # v1, optional
//! create_database = false          # v1: CREATE DATABASE on open
//! username = ""                    # v1, optional
//! password = ""
//! org = ""                         # v2
//! bucket = ""                      # v2
//! token = ""                       # v2 (Authorization: Token …)
//! measurement = "{1}"              # template over the topic
//! tags = { device = "{2}" }        # tag key = template; default { topic = "{topic}" }
//! timeout_ms = 10000
//! ```
//!
//! # The mapping rule
//!
//! One record is one point:
//!
//! - **measurement**: the `measurement` template over the topic (default: its first
//!   token, `sensors` for `sensors.dev1.env`);
//! - **tags**: each `tags` entry, its value the template over the topic (default: one tag
//!   `topic` holding the whole topic); a template that renders empty leaves its tag out;
//! - **fields**: from the payload. A JSON object gives one field per member: numbers as
//!   floats, booleans as booleans, strings as strings, nested objects flattened with `.`
//!   between keys (`{"env":{"t":21}}` → `env.t=21`), `null` and arrays left out. A JSON
//!   number, boolean or string, or a UTF-8 text (a number if it parses as one), gives
//!   one field `value`;
//! - **time**: the record's publish time in nanoseconds (unique and increasing per
//!   topic, so points of one series never overwrite each other).
//!
//! A payload that yields no field (not UTF-8, an empty object, only arrays) cannot be a
//! point: it is a poison record, dead-lettered with the reason.
//!
//! # Errors and delivery
//!
//! A batch is one `POST` of its lines. InfluxDB keeps the valid points of a batch and
//! answers 400 naming what it dropped: a line it cannot parse is found by its text and
//! is a poison record; a point it refuses for another reason (a field whose type
//! conflicts with the series) is isolated by the runtime, which writes the batch again
//! in halves. Writing a point again is harmless: a point with the same measurement, tags
//! and time replaces itself, so delivery is at least once with no duplicate. 5xx answers,
//! timeouts and connection failures are retryable; 401 and 403 are fatal, and so is 404
//! (no such database or bucket) unless `create_database` makes it.

mod config;
pub(crate) mod line;
mod sink;

pub use config::{InfluxApi, InfluxDbConfig};
pub use sink::InfluxDbSink;
pub(crate) use sink::factory;
