//! The real PostgreSQL of the sink tests: its address from `STREAMBUS_TEST_POSTGRES_URL`.
//!
//! Without the variable (or with the server down) a test is skipped with a message,
//! unless `CI=true`, where that is a failure: CI must exercise the real server.

#![allow(dead_code, unreachable_pub, reason = "each test file uses part of it")]

use std::net::SocketAddr;

use tokio_postgres::{Client, NoTls};

/// The server's URL, or `None` (after saying why) when the test must be skipped.
pub async fn url() -> Option<String> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let Ok(url) = std::env::var("STREAMBUS_TEST_POSTGRES_URL") else {
        assert!(
            !ci,
            "CI=true: STREAMBUS_TEST_POSTGRES_URL must name the test PostgreSQL"
        );
        eprintln!("skipped: STREAMBUS_TEST_POSTGRES_URL is not set");
        return None;
    };
    match tokio_postgres::connect(&url, NoTls).await {
        Ok(_) => Some(url),
        Err(e) => {
            assert!(!ci, "CI=true: PostgreSQL at {url} is unreachable: {e}");
            eprintln!("skipped: PostgreSQL at {url} is unreachable: {e}");
            None
        }
    }
}

/// A connection for checking rows.
pub async fn client(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// Drops `table` so the test starts from nothing.
pub async fn fresh_table(url: &str, table: &str) {
    client(url)
        .await
        .batch_execute(&format!("DROP TABLE IF EXISTS {table}"))
        .await
        .unwrap();
}

/// Makes `table` one a sink cannot use (none of its columns): the sink fails fatally
/// when it starts (its index creation refers to a missing column).
pub async fn unusable_table(url: &str, table: &str) {
    fresh_table(url, table).await;
    client(url)
        .await
        .batch_execute(&format!("CREATE TABLE {table} (unrelated int)"))
        .await
        .unwrap();
}

/// Rows in `table` (0 while it does not exist yet) and distinct message ids.
pub async fn counts(client: &Client, table: &str) -> (i64, i64) {
    match client
        .query_one(
            &format!("SELECT count(*), count(DISTINCT message_id) FROM {table}"),
            &[],
        )
        .await
    {
        Ok(row) => (row.get(0), row.get(1)),
        Err(_) => (0, 0),
    }
}

/// The server's host and port (for a proxy in front of it).
pub fn addr(url: &str) -> SocketAddr {
    let config: tokio_postgres::Config = url.parse().unwrap();
    let host = match &config.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        other => panic!("the test PostgreSQL must be reached over TCP, not {other:?}"),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let ip = if host == "localhost" {
        "127.0.0.1".to_owned()
    } else {
        host
    };
    format!("{ip}:{port}").parse().unwrap()
}

/// `url` with its host and port replaced by `addr`.
pub fn via(url: &str, addr: SocketAddr) -> String {
    let config: tokio_postgres::Config = url.parse().unwrap();
    let user = config.get_user().unwrap_or("postgres");
    let db = config.get_dbname().unwrap_or("postgres");
    let password = config
        .get_password()
        .map(|p| format!(" password={}", String::from_utf8_lossy(p)))
        .unwrap_or_default();
    format!(
        "host={} port={} user={user} dbname={db}{password}",
        addr.ip(),
        addr.port()
    )
}
