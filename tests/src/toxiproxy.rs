//! A Toxiproxy proxy in front of one of the stack's servers, for tests that make a server
//! unreachable for one process alone while the shared server keeps serving every other
//! test (the stack's Toxiproxy: `dev/stack up toxiproxy`).

use std::time::Duration;

use serde_json::{json, Value};

use crate::up;

/// The stack's Toxiproxy API (`dev/stack up toxiproxy`).
pub const TOXIPROXY: &str = "http://127.0.0.1:8474";

/// A Toxiproxy proxy, deleted on drop.
#[derive(Debug)]
pub struct Proxy {
    pub name: String,
    /// `host:port` to connect to instead of the upstream.
    pub listen: String,
    http: reqwest::Client,
}

impl Proxy {
    /// A proxy to `upstream` (`host:port`), created disabled: connections are refused.
    pub async fn disabled(upstream: &str) -> Proxy {
        let http = up(
            "reqwest",
            reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build(),
        );
        let name = format!("prism-test-{}", uuid::Uuid::new_v4().simple());
        // A port of its own: a disabled proxy binds nothing, so port 0 would stay 0.
        let free = up("localhost", std::net::TcpListener::bind("127.0.0.1:0"));
        let listen = up("localhost", free.local_addr()).to_string();
        drop(free);
        let answer = http
            .post(format!("{TOXIPROXY}/proxies"))
            .json(&json!({
                "name": name,
                "listen": listen,
                "upstream": upstream,
                "enabled": false,
            }))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status);
        let answer = up("toxiproxy (start it: dev/stack up toxiproxy)", answer);
        let created: Value = up("toxiproxy's answer", answer.json().await);
        assert_eq!(created["listen"], listen.as_str(), "{created}");
        Proxy { name, listen, http }
    }

    pub async fn enable(&self) {
        let answer = self
            .http
            .post(format!("{TOXIPROXY}/proxies/{}", self.name))
            .json(&json!({ "enabled": true }))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status);
        up("enabling the toxiproxy proxy", answer);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Also after a failed assertion, so with plain blocking I/O (no runtime needed).
        use std::io::{Read, Write};
        let address = TOXIPROXY.trim_start_matches("http://");
        if let Ok(mut stream) = std::net::TcpStream::connect(address) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let request = format!(
                "DELETE /proxies/{} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n",
                self.name
            );
            if stream.write_all(request.as_bytes()).is_ok() {
                let _ = stream.read_to_end(&mut Vec::new());
            }
        }
    }
}
