//! The `prism-command` binary at start: the compiled-in (public) token is refused on a
//! listener other machines can reach, with an error naming the key to set, and the log it
//! writes to a pipe has no terminal colour codes.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use prism_tests::{unique, up};

#[test]
fn the_compiled_in_token_is_refused_off_loopback_and_logged_without_colour() {
    let root = prism_tests::repo_root();
    let mut child = up(
        "the prism-command binary",
        Command::new(env!("CARGO_BIN_EXE_prism-command"))
            .current_dir(&root)
            .env("PRISM_CONFIG", root.join("config/prism.toml"))
            .env_remove("PRISM_PROFILE")
            .env_remove("RUST_LOG")
            .env_remove("NO_COLOR")
            .env_remove("PRISM_AUTH__TOKENS")
            .env("PRISM_COMMAND__LISTEN", "0.0.0.0:0")
            // Names of its own, should it start anyway.
            .env("PRISM_MONGODB__DATABASE", unique("t_cmd_start"))
            .env("PRISM_KAFKA__TOPIC", unique("t-cmd-start"))
            .env("PRISM_LOG__LEVEL", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            _ if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let mut log = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = stderr.read_to_string(&mut log);
    }
    assert!(
        status.is_some_and(|s| !s.success()),
        "prism-command served on 0.0.0.0 with the compiled-in token ({status:?}):\n{log}"
    );
    assert!(log.contains("[command] auth.tokens"), "{log}");
    assert!(log.contains("PRISM_AUTH__TOKENS"), "{log}");
    assert!(log.contains("prism-command failed"), "no log line:\n{log}");
    assert!(
        !log.contains("\x1b["),
        "the log written to a pipe has ANSI colour codes:\n{log:?}"
    );
}
