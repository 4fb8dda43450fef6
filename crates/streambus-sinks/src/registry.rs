//! [`SinkRegistry`]: sink types by name.
//!
//! Each `[[sinks]]` entry of the configuration names a `type`; the registry maps that
//! name to a [`SinkFactory`], which turns the entry's type-specific fields (a
//! [`SinkSpec`]) into a fresh sink. The runtime calls the factory once at start-up to
//! validate the entry, and again for every restart, so an incarnation never inherits a
//! broken connection or half-written state from the previous one.
//!
//! [`SinkRegistry::with_builtins`] knows `stdout`, and `file` and `postgres` when their
//! features are on. Register your own type with [`SinkRegistry::register`].

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use streambus_types::ConfigError;

use crate::sink::Sink;

/// Builds a sink from its configuration entry.
pub type SinkFactory = Arc<dyn Fn(&SinkSpec) -> Result<Box<dyn Sink>, ConfigError> + Send + Sync>;

/// One configured sink, as its factory sees it.
#[derive(Debug, Clone)]
pub struct SinkSpec {
    /// The sink's name (unique in the configuration).
    pub name: String,
    /// The fields of the entry that the runtime does not own.
    pub options: serde_json::Map<String, serde_json::Value>,
}

impl SinkSpec {
    /// Parses the type-specific fields into `T`. Errors name the field as
    /// `sinks.<name>.<field>`; use `#[serde(deny_unknown_fields)]` on `T` so that a
    /// misspelt field is refused.
    pub fn options<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        let value = serde_json::Value::Object(self.options.clone());
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            ConfigError {
                field: if path == "." {
                    format!("sinks.{}", self.name)
                } else {
                    format!("sinks.{}.{path}", self.name)
                },
                reason: e.into_inner().to_string(),
            }
        })
    }

    /// An error about `field` of this sink.
    pub fn error(&self, field: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            field: format!("sinks.{}.{field}", self.name),
            reason: reason.into(),
        }
    }
}

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
