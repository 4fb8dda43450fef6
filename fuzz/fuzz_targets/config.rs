//! Any text as a configuration file: parsing and validation either accept it or say
//! which field is wrong, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use streambus_types::BusConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = toml::from_str::<BusConfig>(text)
        && let Err(e) = config.validate()
    {
        assert!(!e.field.is_empty(), "a validation error names its field: {e}");
    }
});
