//! The live page in a real browser: headless Chromium, driven over WebDriver by
//! chromedriver, opens the page `prism-dashboard` serves and is watched the way an operator
//! would watch it.
//!
//! One test walks the page through its life, each step a guarantee:
//! 1. it loads and goes live with no error in the browser's console (any `SEVERE` entry
//!    fails the test; warnings are printed);
//! 2. a large deposit sent through `prism-command` moves the hour's event count and shows
//!    in the live feed within a second of the command's answer;
//! 3. at 1280×800 and 1920×1080 the document does not scroll sideways; a screenshot of
//!    each is kept in `.prism/artifacts/` (git-ignored) for a human to look at;
//! 4. after `prism-dashboard` is killed and started again on the same port, the page says
//!    so, reconnects by itself and shows the next deposit.
//!
//! The browser is Debian's `chromium` with its `chromium-driver`, found on `PATH`;
//! `dev/test` installs both. Without them the test fails, saying so: it never skips.
//! The WebDriver client is the few W3C commands the test needs, spoken with `reqwest`, plus
//! chromedriver's own `se/log` for the console.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use prism_tests::{repo_root, unique, up};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::e2e::{CommandService, TOKEN};
use crate::harness::{isolated, open_account, post, Dashboard, ONE_AT_A_TIME};

/// How long a command may take to show on the page, counted from its answer.
const VISIBLE_WITHIN: Duration = Duration::from_secs(1);
/// How often the page is read while waiting for it.
const POLL_EVERY: Duration = Duration::from_millis(50);
/// How long the page may take to be live again (and show a new deposit) after a restart.
const RECOVERS_WITHIN: Duration = Duration::from_secs(20);
/// The screen sizes the page is laid out and photographed at.
const SCREENS: [(u32, u32); 2] = [(1280, 800), (1920, 1080)];

/// The page loads clean, follows commands within a second, fits 1280×800 and 1920×1080
/// without sideways scrolling (screenshots kept as artifacts), and recovers by itself when
/// `prism-dashboard` is killed and started again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_page_loads_clean_follows_commands_within_a_second_and_survives_a_restart() {
    let _one = ONE_AT_A_TIME.lock().await;
    let tools = BrowserTools::find();
    // A failure screenshot from an earlier run would mislead whoever looks next.
    let _ = std::fs::remove_file(repo_root().join(".prism/artifacts/dashboard-failure.png"));
    isolated(2, |env| async move {
        let command = CommandService::start(&env.config).await;
        let mut dashboard = Dashboard::start(&env);
        dashboard.wait_ready(Duration::from_secs(60)).await;
        let driver = ChromeDriver::start(&tools).await;
        let page = driver.open_session(&tools).await;
        let http = reqwest::Client::new();

        // 1. The page loads, goes live, and the console stays clean.
        page.goto(&format!("{}/#token={TOKEN}", dashboard.url))
            .await;
        let (start, _) = page
            .wait_until(
                "the page goes live",
                Duration::from_secs(15),
                &dashboard,
                |s| (s.conn == "Live").then_some(s.events1h).flatten(),
            )
            .await;
        let shown = page.state().await;
        assert!(
            !shown.token_form,
            "the token from the URL was refused: {shown:?}"
        );
        assert_eq!(shown.banner, None, "a live page shows no banner");
        assert_eq!(shown.title, "Prism — live operations");
        page.assert_console_clean("loading the page").await;
        eprintln!("the page is live; the hour counts {start} events");

        // 2. A deposit through prism-command is on the page within a second.
        let account = open_account(&http, &command, 1).await;
        let (opened, _) = page
            .wait_until(
                "the new account counts",
                Duration::from_secs(10),
                &dashboard,
                |s| s.events1h.filter(|n| *n > start),
            )
            .await;
        let sent = Instant::now();
        post(
            &http,
            format!("{}/v1/accounts/{account}/deposits", command.url),
            json!({"amount_minor": 250_000}),
        )
        .await;
        let accepted = Instant::now();
        let (deposited, seen) = page
            .wait_until(
                "the deposit shows",
                Duration::from_secs(10),
                &dashboard,
                |s| {
                    s.events1h
                        .filter(|n| *n > opened && s.shows_large_deposit("2,500.00 EUR"))
                },
            )
            .await;
        let delay = seen.saturating_duration_since(accepted);
        eprintln!(
            "command answered → on the page: {} ms (the command took {} ms)",
            delay.as_millis(),
            accepted.duration_since(sent).as_millis()
        );
        assert!(
            delay < VISIBLE_WITHIN,
            "the deposit took {delay:?} to show on the page (limit {VISIBLE_WITHIN:?})"
        );
        page.assert_console_clean("following commands").await;

        // 3. Both screen sizes: no sideways scrolling, a screenshot of each.
        let artifacts = up("the artifacts dir", artifacts());
        for (width, height) in SCREENS {
            page.set_viewport(width, height).await;
            page.next_frames().await;
            let (scroll_width, inner_width): (u64, u64) = serde_json::from_value(
                page.execute(
                    "return [document.documentElement.scrollWidth, window.innerWidth];",
                    json!([]),
                )
                .await,
            )
            .expect("two widths");
            assert!(
                scroll_width <= inner_width,
                "at {width}×{height} the page scrolls sideways: \
                 {scroll_width} px wide in a {inner_width} px window"
            );
            let png = page.screenshot().await;
            assert_eq!(
                png_size(&png),
                Some((width, height)),
                "the screenshot's size"
            );
            let path = artifacts.join(format!("dashboard-{width}x{height}.png"));
            up("the artifacts dir", std::fs::write(&path, &png));
            eprintln!("screenshot {width}×{height}: {}", path.display());
        }
        page.set_viewport(SCREENS[0].0, SCREENS[0].1).await;
        page.assert_console_clean("resizing").await;

        // 4. prism-dashboard killed and started again: the page notices and recovers.
        dashboard.kill();
        page.wait_until(
            "the page notices prism-dashboard is gone",
            Duration::from_secs(10),
            &dashboard,
            |s| (s.conn != "Live").then_some(()),
        )
        .await;
        let restarted = Instant::now();
        dashboard.spawn();
        let deadline = restarted + RECOVERS_WITHIN;
        page.wait_until(
            "the page goes live again",
            deadline.saturating_duration_since(Instant::now()),
            &dashboard,
            |s| (s.conn == "Live").then_some(()),
        )
        .await;
        eprintln!(
            "restart → the page is live again: {} ms",
            restarted.elapsed().as_millis()
        );
        post(
            &http,
            format!("{}/v1/accounts/{account}/deposits", command.url),
            json!({"amount_minor": 260_000}),
        )
        .await;
        page.wait_until(
            "the deposit after the restart shows",
            deadline.saturating_duration_since(Instant::now()),
            &dashboard,
            |s| {
                s.events1h
                    .filter(|n| *n > deposited && s.shows_large_deposit("2,600.00 EUR"))
            },
        )
        .await;
        eprintln!(
            "restart → a new deposit on the page: {} ms",
            restarted.elapsed().as_millis()
        );
        page.assert_console_clean_after_outage(&dashboard.url).await;

        // A token the services accept but without the scope dashboard:read: the page stops
        // and asks for another one, saying why.
        page.goto(&format!(
            "{}/?scope#token={}",
            dashboard.url,
            crate::projector::LEDGER_ONLY_TOKEN
        ))
        .await;
        let (message, _) = page
            .wait_until(
                "the page asks for a token with the scope",
                Duration::from_secs(15),
                &dashboard,
                |s| {
                    (s.token_form && s.token_message.contains("dashboard:read"))
                        .then(|| s.token_message.clone())
                },
            )
            .await;
        eprintln!("a token without the scope: {message}");

        page.quit().await;
        command.stop().await;
    })
    .await;
}

// ---- The page as the test reads it ---------------------------------------------------------

/// What the test reads off the page (see [`STATE_JS`]).
#[derive(Debug, Deserialize)]
struct PageState {
    title: String,
    /// `#conn-state`: "Connecting…", "Live", "Reconnecting…" or "Token required".
    conn: String,
    /// The banner's text while it shows.
    banner: Option<String>,
    token_form: bool,
    /// The token form's message.
    token_message: String,
    /// `body.dataset.events1h`: the hour's event count last rendered.
    events1h: Option<u64>,
    feed: Vec<FeedRow>,
}

#[derive(Debug, Deserialize)]
struct FeedRow {
    kind: String,
    large: bool,
    amount: String,
}

impl PageState {
    /// The live feed shows a deposit of `amount` (as the page writes it), tagged large.
    fn shows_large_deposit(&self, amount: &str) -> bool {
        self.feed
            .iter()
            .any(|row| row.kind == "Deposit" && row.large && row.amount == amount)
    }
}

/// Reads [`PageState`] in one round trip.
const STATE_JS: &str = r"
const byId = (id) => document.getElementById(id);
const banner = byId('banner');
const events = document.body.dataset.events1h;
return {
  title: document.title,
  conn: byId('conn-state').textContent,
  banner: banner.hidden ? null : banner.textContent,
  token_form: !byId('token-form').hidden,
  token_message: byId('token-message').textContent,
  events1h: events === undefined || events === '' ? null : Number(events),
  feed: [...byId('feed').tBodies[0].rows].map((tr) => ({
    kind: tr.cells[1]?.firstChild?.textContent ?? '',
    large: Boolean(tr.cells[1]?.querySelector('.tag')),
    amount: tr.cells[2]?.textContent ?? '',
  })),
};";

/// Waits for a rendered frame or three (a resize is observed in one frame and drawn in
/// the next).
const FRAMES_JS: &str = r"
const done = arguments[arguments.length - 1];
requestAnimationFrame(() => requestAnimationFrame(() => requestAnimationFrame(() => done(true))));";

/// `<repo>/.prism/artifacts/` (git-ignored), created if need be.
fn artifacts() -> std::io::Result<PathBuf> {
    let dir = repo_root().join(".prism/artifacts");
    std::fs::create_dir_all(&dir)?;
    dir.canonicalize()
}

/// A PNG's width and height, from its header.
fn png_size(png: &[u8]) -> Option<(u32, u32)> {
    if png.get(..8)? != b"\x89PNG\r\n\x1a\n" || png.get(12..16)? != b"IHDR" {
        return None;
    }
    let width = u32::from_be_bytes(png.get(16..20)?.try_into().ok()?);
    let height = u32::from_be_bytes(png.get(20..24)?.try_into().ok()?);
    Some((width, height))
}

// ---- The browser ---------------------------------------------------------------------------

/// Chromium and chromedriver, as installed.
#[derive(Debug)]
struct BrowserTools {
    chromium: PathBuf,
    chromedriver: PathBuf,
}

impl BrowserTools {
    /// Finds both on `PATH`, or fails saying how to install them.
    fn find() -> BrowserTools {
        let find = |name: &str| {
            let path = std::env::var_os("PATH").unwrap_or_default();
            let found = std::env::split_paths(&path)
                .map(|dir| dir.join(name))
                .find(|p| p.is_file());
            found.unwrap_or_else(|| {
                panic!(
                    "`{name}` is not installed: the browser tests need Debian's `chromium` and \
                     `chromium-driver` packages. Run `dev/test` (it installs them), or \
                     `apt-get install chromium chromium-driver`."
                )
            })
        };
        BrowserTools {
            chromium: find("chromium"),
            chromedriver: find("chromedriver"),
        }
    }
}

/// chromedriver as a child process on a free port; shut down (closing its browsers) and
/// killed when dropped.
#[derive(Debug)]
struct ChromeDriver {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
    http: reqwest::Client,
}

impl ChromeDriver {
    async fn start(tools: &BrowserTools) -> ChromeDriver {
        let port = {
            let listener = up("localhost", std::net::TcpListener::bind("127.0.0.1:0"));
            up("localhost", listener.local_addr()).port()
        };
        let log = std::env::temp_dir().join(format!("{}.log", unique("prism-chromedriver")));
        let output = up(
            "the log file",
            std::fs::File::options()
                .create(true)
                .append(true)
                .open(&log),
        );
        let errors = up("the log file", output.try_clone());
        let child = Command::new(&tools.chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(output)
            .stderr(errors)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", tools.chromedriver.display()));
        let mut driver = ChromeDriver {
            child: Some(child),
            port,
            log,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("a reqwest client"),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = driver
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "chromedriver exited ({status}); its log:\n{}",
                    driver.log_tail()
                );
            }
            let ready = driver
                .http
                .get(format!("{}/status", driver.url()))
                .send()
                .await
                .ok();
            if let Some(answer) = ready {
                let status: Value = answer.json().await.unwrap_or_default();
                if status["value"]["ready"] == json!(true) {
                    return driver;
                }
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver not ready within 15 s; its log:\n{}",
                driver.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// A headless Chromium session that records the page's console.
    async fn open_session(&self, tools: &BrowserTools) -> Page {
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": tools.chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,800"],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let answer = self
            .http
            .post(format!("{}/session", self.url()))
            .json(&capabilities)
            .send()
            .await;
        let answer = match answer {
            Ok(answer) => answer,
            Err(e) => panic!("chromedriver: {e}; its log:\n{}", self.log_tail()),
        };
        let status = answer.status();
        let body: Value = answer.json().await.unwrap_or_default();
        let Some(id) = body["value"]["sessionId"].as_str() else {
            panic!(
                "chromedriver could not start {}: {status} {}; its log:\n{}",
                tools.chromium.display(),
                body["value"]["message"],
                self.log_tail()
            );
        };
        let found = &body["value"]["capabilities"];
        eprintln!(
            "browser: Chromium {} with ChromeDriver {}",
            found["browserVersion"].as_str().unwrap_or("?"),
            found["chrome"]["chromedriverVersion"]
                .as_str()
                .and_then(|v| v.split(' ').next())
                .unwrap_or("?")
        );
        Page {
            session: format!("{}/session/{id}", self.url()),
            http: self.http.clone(),
        }
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // Killed outright, chromedriver would leave its browsers running: ask it to shut
        // down first (it closes them), then make sure.
        let address = SocketAddr::from(([127, 0, 0, 1], self.port));
        if let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_secs(1)) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = stream.write_all(
                b"GET /shutdown HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            );
            let _ = stream.read_to_end(&mut Vec::new());
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// One entry of the browser's console log.
#[derive(Debug, Deserialize)]
struct LogEntry {
    level: String,
    #[serde(default)]
    source: String,
    message: String,
}

/// A browser session (one tab), spoken to in W3C WebDriver.
#[derive(Debug)]
struct Page {
    /// `<chromedriver>/session/<id>`
    session: String,
    http: reqwest::Client,
}

impl Page {
    /// Sends a WebDriver command; its `value`, or the WebDriver error as text.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> Result<Value, String> {
        let url = if path.is_empty() {
            self.session.clone()
        } else {
            format!("{}/{path}", self.session)
        };
        let mut request = self.http.request(method.clone(), &url);
        if method == reqwest::Method::POST {
            request = request.json(&body);
        }
        let answer = request
            .send()
            .await
            .map_err(|e| format!("{method} {path}: chromedriver: {e}"))?;
        let status = answer.status();
        let answer: Value = answer
            .json()
            .await
            .map_err(|e| format!("{method} {path}: chromedriver's answer: {e}"))?;
        if status.is_success() {
            Ok(answer["value"].clone())
        } else {
            Err(format!(
                "{method} {path}: {status} {}: {}",
                answer["value"]["error"], answer["value"]["message"]
            ))
        }
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.send(reqwest::Method::POST, path, body)
            .await
            .unwrap_or_else(|e| panic!("WebDriver: {e}"))
    }

    async fn goto(&self, url: &str) {
        self.post("url", json!({ "url": url })).await;
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page.
    async fn execute(&self, script: &str, args: Value) -> Value {
        self.post("execute/sync", json!({ "script": script, "args": args }))
            .await
    }

    async fn state(&self) -> PageState {
        let value = self.execute(STATE_JS, json!([])).await;
        serde_json::from_value(value.clone())
            .unwrap_or_else(|e| panic!("the page's state {value}: {e}"))
    }

    /// Reads the page every [`POLL_EVERY`] until `check` gives a value: the value and when
    /// it was seen. After `limit`, fails the test (`what` says what was awaited) with what
    /// the page showed last, its console, a screenshot
    /// (`.prism/artifacts/dashboard-failure.png`) and prism-dashboard's log.
    async fn wait_until<T>(
        &self,
        what: &str,
        limit: Duration,
        dashboard: &Dashboard,
        mut check: impl FnMut(&PageState) -> Option<T>,
    ) -> (T, Instant) {
        let deadline = Instant::now() + limit;
        let last = loop {
            let state = self.state().await;
            if let Some(found) = check(&state) {
                return (found, Instant::now());
            }
            if Instant::now() >= deadline {
                break state;
            }
            tokio::time::sleep(POLL_EVERY).await;
        };
        let console = self.console().await.unwrap_or_default();
        let shot = match self.screenshot_bytes().await {
            Ok(png) => {
                let saved = artifacts().and_then(|dir| {
                    let path = dir.join("dashboard-failure.png");
                    std::fs::write(&path, png).map(|()| path)
                });
                match saved {
                    Ok(path) => path.display().to_string(),
                    Err(e) => format!("not saved: {e}"),
                }
            }
            Err(e) => format!("none: {e}"),
        };
        panic!(
            "timed out after {limit:?} waiting until {what}.\nThe page showed: {last:#?}\n\
             Its console: {console:#?}\nScreenshot: {shot}\nprism-dashboard's log:\n{}",
            dashboard.log_tail()
        );
    }

    /// The console entries since the last read (chromedriver hands each out once).
    async fn console(&self) -> Result<Vec<LogEntry>, String> {
        let value = self
            .send(reqwest::Method::POST, "se/log", json!({"type": "browser"}))
            .await?;
        serde_json::from_value(value.clone()).map_err(|e| format!("the browser log {value}: {e}"))
    }

    /// Fails on any SEVERE entry since the last read (an uncaught exception, a failed
    /// request, a CSP violation, `console.error`); prints warnings.
    async fn assert_console_clean(&self, when: &str) {
        let entries = self
            .console()
            .await
            .unwrap_or_else(|e| panic!("WebDriver: {e}"));
        let severe = print_and_keep_severe(when, entries);
        assert!(
            severe.is_empty(),
            "the browser's console has errors while {when}: {severe:#?}"
        );
    }

    /// Like [`Self::assert_console_clean`], but a request to `origin` that failed at the
    /// network level is expected: that is the page retrying while the server was down.
    async fn assert_console_clean_after_outage(&self, origin: &str) {
        let entries = self
            .console()
            .await
            .unwrap_or_else(|e| panic!("WebDriver: {e}"));
        let (expected, severe): (Vec<_>, Vec<_>) = print_and_keep_severe("recovering", entries)
            .into_iter()
            .partition(|e| e.source == "network" && e.message.starts_with(origin));
        eprintln!(
            "while prism-dashboard was down, {} requests failed at the network level (expected)",
            expected.len()
        );
        assert!(
            severe.is_empty(),
            "the browser's console has errors while recovering: {severe:#?}"
        );
    }

    /// Makes the viewport (what the page and a screenshot see) `width`×`height`. Headless
    /// Chromium keeps room for a window frame, so the window is grown by the difference.
    async fn set_viewport(&self, width: u32, height: u32) {
        let measure = || async {
            let sizes: [u32; 4] = serde_json::from_value(
                self.execute(
                    "return [innerWidth, innerHeight, outerWidth, outerHeight];",
                    json!([]),
                )
                .await,
            )
            .expect("four sizes");
            sizes
        };
        self.post("window/rect", json!({"width": width, "height": height}))
            .await;
        let [inner_w, inner_h, outer_w, outer_h] = measure().await;
        if (inner_w, inner_h) != (width, height) {
            let window = json!({
                "width": width + outer_w.saturating_sub(inner_w),
                "height": height + outer_h.saturating_sub(inner_h),
            });
            self.post("window/rect", window).await;
        }
        let [inner_w, inner_h, ..] = measure().await;
        assert_eq!(
            (inner_w, inner_h),
            (width, height),
            "the viewport could not be sized"
        );
    }

    /// Returns once the page has rendered a few frames.
    async fn next_frames(&self) {
        self.post("execute/async", json!({"script": FRAMES_JS, "args": []}))
            .await;
    }

    async fn screenshot_bytes(&self) -> Result<Vec<u8>, String> {
        let value = self
            .send(reqwest::Method::GET, "screenshot", Value::Null)
            .await?;
        let text = value.as_str().ok_or("no screenshot in the answer")?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| format!("the screenshot: {e}"))
    }

    /// A PNG of the viewport.
    async fn screenshot(&self) -> Vec<u8> {
        self.screenshot_bytes()
            .await
            .unwrap_or_else(|e| panic!("WebDriver: {e}"))
    }

    /// Ends the session (closes the browser).
    async fn quit(self) {
        if let Err(e) = self.send(reqwest::Method::DELETE, "", Value::Null).await {
            eprintln!("closing the browser: {e}");
        }
    }
}

/// Prints warnings and errors (`when` says what the page was doing); returns the errors.
fn print_and_keep_severe(when: &str, entries: Vec<LogEntry>) -> Vec<LogEntry> {
    entries
        .into_iter()
        .filter(|e| {
            if e.level == "WARNING" || e.level == "SEVERE" {
                eprintln!(
                    "console while {when}: {} {}: {}",
                    e.level, e.source, e.message
                );
            }
            e.level == "SEVERE"
        })
        .collect()
}
