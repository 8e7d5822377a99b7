//! Logging set-up: `tracing` to stderr, as text or JSON (by default JSON unless stderr is a
//! terminal), filtered by `RUST_LOG` or config.
//!
//! Text is coloured only when stderr is a terminal and `NO_COLOR` is not set
//! (<https://no-color.org>): logs redirected to a file, a pipe or a log shipper must not
//! carry ANSI escape codes.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log filter {filter:?}: {source}")]
    Filter {
        filter: String,
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("a global logger is already installed")]
    AlreadyInstalled,
}

/// Installs the global subscriber. `RUST_LOG`, when set, wins over `log.level`.
pub fn init(cfg: &LogConfig) -> Result<(), TelemetryError> {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| cfg.level.clone());
    let env_filter = EnvFilter::try_new(&filter).map_err(|source| TelemetryError::Filter {
        filter: filter.clone(),
        source,
    })?;
    let terminal = std::io::stderr().is_terminal();
    let colour = use_colour(terminal, std::env::var_os("NO_COLOR").as_deref());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    let result = if json(cfg.format, terminal) {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    result.map_err(|_| TelemetryError::AlreadyInstalled)
}

/// Whether log lines are JSON objects: as configured, and with `auto` whenever stderr is
/// not a terminal (a file, a pipe, a container's log: read by programs, not people).
fn json(format: LogFormat, terminal: bool) -> bool {
    match format {
        LogFormat::Auto => !terminal,
        LogFormat::Text => false,
        LogFormat::Json => true,
    }
}

/// Whether log lines get colours: only on a terminal, and never when `NO_COLOR` is set to a
/// non-empty value.
fn use_colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::{json, use_colour};
    use crate::config::LogFormat;

    #[test]
    fn auto_is_json_off_a_terminal_and_text_on_one() {
        assert!(json(LogFormat::Auto, false));
        assert!(!json(LogFormat::Auto, true));
        for terminal in [false, true] {
            assert!(json(LogFormat::Json, terminal));
            assert!(!json(LogFormat::Text, terminal));
        }
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some(OsStr::new(""))));
        assert!(!use_colour(true, Some(OsStr::new("1"))));
        assert!(!use_colour(false, None));
        assert!(!use_colour(false, Some(OsStr::new(""))));
    }
}
