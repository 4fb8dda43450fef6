//! The dashboard in a real headless Chromium, driven over WebDriver (Debian's
//! `chromium` and `chromium-driver`, installed by `.ci/packages`): it loads from the
//! binary with no network beyond the bus itself, its message counter rises while a
//! publisher runs, and a quarantined sink is shown as such. A screenshot is left at
//! `target/dashboard.png` for a person to look at.

#[path = "common/harness.rs"]
mod harness;
#[path = "common/postgres.rs"]
mod postgres;
#[path = "common/served.rs"]
mod served;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{ClientBuilder, Locator};
use harness::*;
use served::Served;
use streambus::client::{Client, ClientOptions};
use streambus::{Message, Topic};

/// A `chromedriver` on a free loopback port; killed on drop, with any browser it
/// started (found by its profile directory), also when the test fails midway.
struct Driver {
    child: Child,
    url: String,
    /// The browser's profile directory, unique to this test.
    profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("pkill")
            .args(["-f", &self.profile.path().display().to_string()])
            .status();
    }
}

/// Starts chromedriver, or says why not (`None` outside CI when it is not installed).
async fn chromedriver() -> Option<Driver> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(_) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("chromedriver not installed (.ci/packages installs it); the browser test is skipped");
            return None;
        }
        Err(e) => panic!("chromedriver is needed under CI=true: {e}"),
    };
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
        profile: tempfile::tempdir().unwrap(),
    };
    wait_until("chromedriver listens", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
    })
    .await;
    Some(driver)
}

/// The number shown in the element `css`, once it shows one.
async fn number(browser: &fantoccini::Client, css: &str) -> u64 {
    let text = browser.find(Locator::Css(css)).await.unwrap().text().await.unwrap();
    text.trim().parse().unwrap_or(0)
}

/// The dashboard loads, counts a running publisher's messages live, and shows a
/// quarantined sink as quarantined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_bus_live() {
    let Some(url) = postgres::url().await else { return };
    let Some(driver) = chromedriver().await else { return };
    // A sink that fails fatally at every start (its table is unusable) and has no
    // restart budget: quarantined at once.
    let table = "sb_test_dashboard_sink";
    postgres::unusable_table(&url, table).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("streambus.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[admin]
dashboard_interval_ms = 250

[[sinks]]
name = "warehouse"
type = "postgres"
topics = ["archive.>"]
url = "{url}"
table = "{table}"
restart = {{ max_restarts = 0 }}
"#
        ),
    )
    .unwrap();
    let served = Served::start(
        &["--grpc-addr", "127.0.0.1:0", "--config", config.to_str().unwrap()],
        &[],
    );
    let admin = served.admin.clone().unwrap();

    // A publisher that runs until the test ends.
    let client = Client::connect_with(ClientOptions::new(served.url.clone()).name("dashboard-feed"))
        .await
        .unwrap();
    let mut watcher = client.subscribe("sensors.>", Default::default()).await.unwrap();
    let reader = tokio::spawn(async move { while futures::StreamExt::next(&mut watcher).await.is_some() {} });
    let publisher = tokio::spawn(async move {
        for round in 0u64.. {
            let batch: Vec<Message> = (0..20)
                .map(|i| {
                    Message::new(
                        Topic::new(&format!("sensors.dev{}.temp", i % 5)).unwrap(),
                        format!("{round}"),
                    )
                })
                .collect();
            if client.publish_batch(batch, true).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });

    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1100",
                format!("--user-data-dir={}", driver.profile.path().display()),
            ],
        }),
    );
    let browser = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session through chromedriver");
    browser.goto(&format!("{admin}/")).await.unwrap();
    assert_eq!(browser.title().await.unwrap(), "streambus");

    wait_until("the counter shows messages", || async {
        number(&browser, "#published-total").await > 0
    })
    .await;
    let first = number(&browser, "#published-total").await;
    wait_until("the counter rises", || async {
        number(&browser, "#published-total").await > first
    })
    .await;
    wait_until("the sink is shown quarantined", || async {
        browser
            .find(Locator::Css(
                ".sink[data-sink=\"warehouse\"][data-status=\"quarantined\"]",
            ))
            .await
            .is_ok()
    })
    .await;
    let status = browser
        .find(Locator::Css("#status"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(status, "running");
    wait_until("the topics table lists the publisher's topics", || async {
        match browser.find_all(Locator::Css("#topics tr")).await {
            Ok(rows) => rows.len() >= 5,
            Err(_) => false,
        }
    })
    .await;

    wait_until("the subscriber is listed with its deliveries", || async {
        match browser
            .find(Locator::Css(
                "#subscriptions tr[data-filter=\"sensors.>\"] td.delivered",
            ))
            .await
        {
            Ok(cell) => cell.text().await.is_ok_and(|t| t != "0"),
            Err(_) => false,
        }
    })
    .await;
    let tree = browser
        .find_all(Locator::Css("#tree li[data-kind=\"supervisor\"]"))
        .await
        .unwrap();
    assert_eq!(tree.len(), 3, "the three supervisors are drawn");
    let error = browser
        .find(Locator::Css("#error"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(error, "", "the page reports no error");
    // A few updates more, so that the chart has a line to show.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let png = browser.screenshot().await.unwrap();
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("dashboard.png"), &png).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");

    browser.close().await.unwrap();
    publisher.abort();
    reader.abort();
    served.terminate();
    drop(driver);
}
