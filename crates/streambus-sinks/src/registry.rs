//! [`SinkRegistry`]: sink types by name.
//!
//! Each `[[sinks]]` entry of the configuration names a `type`; the registry maps that
//! name to a [`SinkFactory`], which turns the entry's type-specific fields (a
//! [`crate::SinkSpec`]) into a fresh sink. The runtime calls the factory once at start-up to
//! validate the entry, and again for every restart, so an incarnation never inherits a
//! broken connection or half-written state from the previous one.
//!
//! [`SinkRegistry::with_builtins`] knows `stdout`, and `file` and `postgres` when their
//! features are on. Register your own type with [`SinkRegistry::register`].

use std::collections::BTreeMap;
use std::sync::Arc;

use streambus_types::ConfigError;

use crate::sink::{Sink, SinkFactory, SinkSpec};

/// Sink types by name.
#[derive(Clone, Default)]
pub struct SinkRegistry {
    factories: BTreeMap<String, SinkFactory>,
}

impl std::fmt::Debug for SinkRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.factories.keys()).finish()
    }
}

impl SinkRegistry {
    /// A registry that knows no type.
    pub fn empty() -> Self {
        SinkRegistry::default()
    }

    /// A registry that knows the built-in types compiled in.
    pub fn with_builtins() -> Self {
        let mut r = SinkRegistry::empty();
        r.register("stdout", crate::stdout::factory);
        #[cfg(feature = "file")]
        r.register("file", crate::file::factory);
        #[cfg(feature = "postgres")]
        r.register("postgres", crate::postgres::factory);
        #[cfg(feature = "nats")]
        r.register("nats", crate::nats::factory);
        #[cfg(feature = "redis")]
        r.register("redis", crate::redis::factory);
        #[cfg(feature = "rabbitmq")]
        r.register("rabbitmq", crate::rabbitmq::factory);
        #[cfg(feature = "mqtt")]
        r.register("mqtt", crate::mqtt::factory);
        #[cfg(feature = "influxdb")]
        r.register("influxdb", crate::influxdb::factory);
        #[cfg(feature = "kafka")]
        r.register("kafka", crate::kafka::factory);
        r
    }

    /// Adds (or replaces) type `kind`.
    pub fn register<F>(&mut self, kind: &str, factory: F) -> &mut Self
    where
        F: Fn(&SinkSpec) -> Result<Box<dyn Sink>, ConfigError> + Send + Sync + 'static,
    {
        self.factories.insert(kind.to_owned(), Arc::new(factory));
        self
    }

    /// The factory of type `kind`.
    pub fn get(&self, kind: &str) -> Option<SinkFactory> {
        self.factories.get(kind).cloned()
    }

    /// The known type names.
    pub fn kinds(&self) -> impl Iterator<Item = &str> {
        self.factories.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code, reason = "only parsed")]
    struct Opts {
        url: String,
        pool_size: u32,
    }

    fn spec(json: &str) -> SinkSpec {
        SinkSpec {
            name: "pg".into(),
            options: serde_json::from_str(json).unwrap(),
        }
    }

    /// Every commented sink example of the shipped sample file is accepted by its
    /// type's factory once uncommented: the documented option names are the real ones.
    #[test]
    fn sample_file_sinks_build() {
        let sample = include_str!("../../../streambus.example.toml");
        let start = sample.find("# [[sinks]]").unwrap();
        let text: String = sample[start..]
            .lines()
            .filter_map(|l| l.strip_prefix("# ").or_else(|| (l == "#").then_some("")))
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        let config: streambus_types::BusConfig = toml::from_str(&text).unwrap();
        let registry = SinkRegistry::with_builtins();
        let mut kinds = Vec::new();
        for sink in &config.sinks {
            let Some(factory) = registry.get(&sink.kind) else {
                // The one built-in type behind a feature that is off by default.
                assert!(
                    sink.kind == "kafka" && !cfg!(feature = "kafka"),
                    "no type {}",
                    sink.kind
                );
                continue;
            };
            let spec = SinkSpec {
                name: sink.name.clone(),
                options: sink.options.clone(),
            };
            if let Err(e) = factory(&spec) {
                panic!("the sample's {} sink: {e}", sink.kind);
            }
            kinds.push(sink.kind.as_str());
        }
        kinds.sort_unstable();
        let mut builtin: Vec<&str> = registry.kinds().collect();
        builtin.sort_unstable();
        assert_eq!(kinds, builtin, "one example of every built-in type");
    }

    /// Option errors name the sink and the field: unknown, missing and mistyped.
    #[test]
    fn option_errors_name_the_field() {
        spec(r#"{"url":"x","pool_size":2}"#).options::<Opts>().unwrap();
        let e = spec(r#"{"url":"x","pool_size":"two"}"#).options::<Opts>().unwrap_err();
        assert_eq!(e.field, "sinks.pg.pool_size");
        let e = spec(r#"{"url":"x","pool_size":2,"poolsize":3}"#)
            .options::<Opts>()
            .unwrap_err();
        assert_eq!(e.field, "sinks.pg.poolsize");
        let e = spec(r#"{"pool_size":2}"#).options::<Opts>().unwrap_err();
        assert!(e.reason.contains("url"), "{e}");
    }

    /// The built-in types are registered under their names.
    #[test]
    fn builtins() {
        let r = SinkRegistry::with_builtins();
        assert!(r.get("stdout").is_some());
        assert!(r.get("nope").is_none());
        #[cfg(feature = "postgres")]
        assert!(r.kinds().any(|k| k == "postgres"));
    }
}
