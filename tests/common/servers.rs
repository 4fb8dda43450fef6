//! Addresses of the real servers the sink tests write to, from `STREAMBUS_TEST_*`
//! variables (`.ci/run` sets them).
//!
//! Without the variable, or with nothing listening there, a test is skipped with a
//! message, unless `CI=true`, where that is a failure: CI must exercise the real server.

#![allow(dead_code, unreachable_pub, reason = "each test file uses part of it")]

use std::net::SocketAddr;

/// `host:port` of the server named by `variable` (a URL such as `nats://127.0.0.1:4222`
/// or `redis://127.0.0.1:6379/0`), or `None` (after saying why) when the test must be
/// skipped.
pub async fn addr(variable: &str) -> Option<SocketAddr> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let Ok(url) = std::env::var(variable) else {
        assert!(!ci, "CI=true: {variable} must name the test server");
        eprintln!("skipped: {variable} is not set");
        return None;
    };
    let authority = url.split("://").nth(1).unwrap_or(&url);
    let authority = authority.split('/').next().unwrap_or(authority);
    let authority = authority
        .rsplit('@')
        .next()
        .unwrap_or(authority)
        .replace("localhost", "127.0.0.1");
    let addr: SocketAddr = authority
        .parse()
        .unwrap_or_else(|e| panic!("{variable}={url}: no host:port ({e})"));
    match tokio::net::TcpStream::connect(addr).await {
        Ok(_) => Some(addr),
        Err(e) => {
            assert!(!ci, "CI=true: the server of {variable} at {addr} is unreachable: {e}");
            eprintln!("skipped: the server of {variable} at {addr} is unreachable: {e}");
            None
        }
    }
}
