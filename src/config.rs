//! Loading the server's configuration: defaults, then a TOML file, then `STREAMBUS_*`
//! environment variables, then validation.
//!
//! Environment variables name a field by its dotted path with `__` for the dots:
//! `STREAMBUS_LIMITS__MAX_MESSAGE_BYTES=65536` sets `limits.max_message_bytes`,
//! `STREAMBUS_GRPC__ADDR=0.0.0.0:50051` sets `grpc.addr`. Variables without `__` (such
//! as `STREAMBUS_CONFIG` or `STREAMBUS_GRPC_ADDR`, read by the CLI's flags) are not
//! fields. Unknown fields are refused, whichever source names them.

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use streambus_types::{BusConfig, ConfigError};

/// Prefix of the environment variables that set configuration fields.
pub const ENV_PREFIX: &str = "STREAMBUS_";

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A source could not be read or does not fit the configuration's shape.
    #[error("{0}")]
    Parse(Box<figment::Error>),
    /// The values do not work together.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

/// Loads the configuration from the defaults, `file` (if any, which must exist) and the
/// environment, and validates it.
pub fn load(file: Option<&Path>) -> Result<BusConfig, LoadError> {
    let mut figment = Figment::from(Serialized::defaults(BusConfig::default()));
    if let Some(file) = file {
        figment = figment.merge(Toml::file_exact(file));
    }
    let env = Env::prefixed(ENV_PREFIX)
        .filter(|key| key.as_str().contains("__"))
        .split("__");
    let config: BusConfig = figment
        .merge(env)
        .extract()
        .map_err(|e| LoadError::Parse(Box::new(e)))?;
    config.validate()?;
    Ok(config)
}
