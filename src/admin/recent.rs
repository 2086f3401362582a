//! The most recent warnings and errors of this process, for the admin page.
//!
//! [`layer`] is a tracing layer that copies every WARN and ERROR event the log filter lets
//! through into a ring buffer of the last [`CAPACITY`]. The buffer is a process-wide static
//! rather than a field of the node: the tracing subscriber it is fed by is itself
//! process-wide (installed once, by `main`), so there is one stream of events per process
//! whatever the number of nodes in it. It holds only what the log lines hold (message and
//! fields, never bodies or tokens, which are not logged), and only events the filter passes.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Mutex;

use serde::Serialize;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// Entries kept; older ones are dropped.
pub const CAPACITY: usize = 200;
/// Longest message kept, in bytes (a log line with a huge field must not pin memory).
const MAX_MESSAGE: usize = 2_000;

/// One warning or error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// When it was logged, in ms since the Unix epoch.
    pub time_ms: u64,
    /// `WARN` or `ERROR`.
    pub level: &'static str,
    /// The module that logged it, e.g. `switchboard::cluster::redis`.
    pub target: String,
    /// The message followed by its fields as `name=value`.
    pub message: String,
}

/// The buffer. A std Mutex: it is held only to push or copy, never across an await, and a
/// tracing event can come from any thread, inside or outside the runtime.
static RECENT: Mutex<VecDeque<Entry>> = Mutex::new(VecDeque::new());

/// The layer feeding the buffer; add it to the process's subscriber.
pub fn layer() -> RecentLayer {
    RecentLayer
}

/// See [`layer`].
#[derive(Debug, Clone, Copy)]
pub struct RecentLayer;

impl<S: Subscriber> Layer<S> for RecentLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let metadata = event.metadata();
        // More verbose levels compare greater: this keeps WARN and ERROR.
        if *metadata.level() > Level::WARN {
            return;
        }
        let mut text = Text::default();
        event.record(&mut text);
        push(Entry {
            time_ms: crate::cluster::now_ms(),
            level: metadata.level().as_str(),
            target: metadata.target().to_owned(),
            message: text.finish(),
        });
    }
}

/// Adds an entry, dropping the oldest beyond [`CAPACITY`].
fn push(entry: Entry) {
    let mut recent = RECENT.lock().unwrap_or_else(|p| p.into_inner());
    if recent.len() == CAPACITY {
        recent.pop_front();
    }
    recent.push_back(entry);
}

/// The kept entries, newest first.
pub fn entries() -> Vec<Entry> {
    let recent = RECENT.lock().unwrap_or_else(|p| p.into_inner());
    recent.iter().rev().cloned().collect()
}

/// An event's message and fields as one line, as the text log shows them.
#[derive(Default)]
struct Text {
    message: String,
    fields: String,
}

impl Text {
    fn finish(mut self) -> String {
        self.message.push_str(&self.fields);
        if self.message.len() > MAX_MESSAGE {
            let mut end = MAX_MESSAGE;
            while !self.message.is_char_boundary(end) {
                end -= 1;
            }
            self.message.truncate(end);
            self.message.push('…');
        }
        self.message
    }
}

impl Visit for Text {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    // One test touches the process-wide buffer, so tests running in parallel cannot race on it.
    #[test]
    fn keeps_the_last_warnings_and_errors_newest_first() {
        let subscriber = tracing_subscriber::registry().with(layer());
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("not kept");
            tracing::warn!(node = "a", error = %"boom", "heartbeat failed");
            tracing::error!("broken");
        });
        let kept = entries();
        assert_eq!(kept.len(), 2, "{kept:?}");
        assert_eq!(kept[0].level, "ERROR");
        assert_eq!(kept[0].message, "broken");
        assert_eq!(kept[1].level, "WARN");
        assert_eq!(kept[1].message, "heartbeat failed node=a error=boom");
        assert_eq!(kept[1].target, module_path!());

        for i in 0..CAPACITY + 5 {
            push(Entry {
                time_ms: 0,
                level: "WARN",
                target: String::new(),
                message: format!("{i}"),
            });
        }
        let kept = entries();
        assert_eq!(kept.len(), CAPACITY);
        assert_eq!(kept[0].message, format!("{}", CAPACITY + 4));
        assert_eq!(kept[CAPACITY - 1].message, "5");

        let long = Text {
            message: "é".repeat(MAX_MESSAGE),
            ..Text::default()
        };
        let text = long.finish();
        assert!(text.len() <= MAX_MESSAGE + '…'.len_utf8());
        assert!(text.ends_with('…'));
    }
}
