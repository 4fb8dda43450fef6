//! `streambus-bench`: a load generator for streambus, run like `nats bench`.
//!
//! - [`echo`]: the original article's workload, `stream.ChatService/BidirectionalChat`
//!   over N connections, closed loop with a window of messages in flight per stream.
//! - [`churn`]: waves of clients with many subscriptions each, connecting and leaving,
//!   with the server's RSS after each wave and after idling.
//! - [`devices`]: IoT fan-in, many device streams connecting at once and publishing a
//!   little each, with the connect storm, latency, server RSS and CPU per message.
//! - [`stalled`]: one subscriber that never reads and many publishers, with the
//!   server's RSS sampled, under each overflow policy.
//! - [`baseline`]: a minimal tonic echo server for the same proto with no actors, the
//!   transport ceiling to compare the bus against.
//! - [`pubsub`]: the `pub`, `sub` and `pubsub` workloads (fan-in, fan-out) against a
//!   streambus server, an in-process bus, or a nats-server.
//! - [`plot`]: `--plot FILE.svg`, latency by percentile and throughput over time.
//! - [`report`]: latency histograms, their merging, the human table and the JSON.
//! - [`proc_stats`]: peak RSS of a server process and this process's CPU, from /proc.
//!
//! It is a client: it talks to servers over their network protocols (gRPC, NATS), or
//! to an in-process bus through the public embedding API.

pub mod baseline;
pub mod churn;
pub mod credentials;
pub mod devices;
pub mod echo;
pub mod plot;
pub mod proc_stats;
pub mod pubsub;
pub mod report;
pub mod stalled;
