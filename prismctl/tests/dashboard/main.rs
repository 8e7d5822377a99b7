//! `prism-dashboard` end to end, against the real stack: the write side runs in-process
//! (PostgreSQL event store in a schema of its own, relay on; the test of a request's trail
//! runs the `prism-command` binary instead, for its log), the real `prism-dashboard`
//! binary runs as a child process configured like an operator would, with a topic,
//! consumer group, Redis namespace and store schema of its own per test.
//!
//! - [`service`]: kills mid-load, Redis restarted mid-stream, the stream's delay, bad input,
//!   the admin status, a request's trail through the services' log lines;
//!   each test that writes ends with the guarantee itself: `prismctl verify dashboard`
//!   finds every counter, top list, distinct count, account and feed entry equal to the
//!   fold of the whole event store.
//! - [`browser`]: the live page in headless Chromium over WebDriver: it loads with a clean
//!   console, shows a command within a second, fits 1280×800 and 1920×1080 (screenshots
//!   kept in `.prism/artifacts/`), and recovers when `prism-dashboard` restarts. Needs
//!   Debian's `chromium` and `chromium-driver` (`dev/test` installs them).
//! - [`harness`]: the test's world (profile, processes, verify, the stream reader).
//!
//! The projector is the `prism-dashboard` binary next to the `prismctl` under test, and so
//! is `prism-command` (`cargo test --workspace` builds them; with `-p prismctl` alone,
//! build them first).

mod browser;
#[path = "../e2e/mod.rs"]
mod e2e;
mod harness;
#[path = "../e2e/projector.rs"]
mod projector;
mod service;
