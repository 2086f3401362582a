//! docs/SETTINGS.md is generated from the command-line definition (`Args`), so the reference
//! and the code cannot drift: this test fails when the checked-in file is stale, and
//! `SWITCHBOARD_BLESS=1 cargo test --test it settings_reference` rewrites it.

use std::fmt::Write as _;
use std::path::Path;

use clap::CommandFactory;
use switchboard::config::Args;

const FILE: &str = "docs/SETTINGS.md";

/// Settings listed without a heading of their own.
const GENERAL: &str = "Server";

/// The reference as markdown: one table per help heading, in the order of `switchboard --help`.
fn reference() -> String {
    let command = Args::command();
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if arg.is_hide_set() || long == "help" || long == "version" {
            continue;
        }
        let help = arg
            .get_long_help()
            .or_else(|| arg.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        let (meaning, stated_default) = split_default(&help);
        let default = stated_default.unwrap_or_else(|| {
            let values: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            match values.as_slice() {
                [] if !arg.get_action().takes_values() => "off".into(),
                [] => "unset".into(),
                values => format!("`{}`", values.join(",")),
            }
        });
        let env = arg
            .get_env()
            .map(|e| format!("`{}`", e.to_string_lossy()))
            .unwrap_or_else(|| "–".into());
        // The file cannot name itself.
        let key = match long {
            "config" => "–".to_owned(),
            long => format!("`{}`", long.replace('-', "_")),
        };
        let row = format!(
            "| {env} | `--{long}` | {key} | {default} | {meaning} |",
            meaning = relink(&meaning.replace('\n', " ").replace('|', "\\|")),
        );
        let heading = arg.get_help_heading().unwrap_or(GENERAL).to_owned();
        match groups.iter_mut().find(|(h, _)| *h == heading) {
            Some((_, rows)) => rows.push(row),
            None => groups.push((heading, vec![row])),
        }
    }
    let mut out = String::from(
        "# Settings reference\n\n\
         Generated from the command-line definition (`src/config/`) by\n\
         `tests/it/settings_reference.rs`; do not edit by hand. After changing a setting, run\n\
         `SWITCHBOARD_BLESS=1 cargo test --test it settings_reference`.\n\n\
         Every setting is a flag, an environment variable and a key of the TOML file named by\n\
         `--config`. Precedence: flag, variable, file, default. Durations take `ms`, `s`, `m`\n\
         or `h`. An invalid setting stops the process at start with one line naming it.\n",
    );
    for (heading, rows) in groups {
        let _ = write!(
            out,
            "\n## {heading}\n\n| Variable | Flag | TOML key | Default | Meaning |\n|---|---|---|---|---|\n"
        );
        for row in rows {
            out.push_str(&row);
            out.push('\n');
        }
    }
    out
}

/// Help texts link as README.md does; the reference lives in docs/.
fn relink(text: &str) -> String {
    text.replace("](#", "](../README.md#")
        .replace("](docs/", "](")
}

/// Splits a help text's `[default: …]` (a default stated in words) off its meaning.
fn split_default(help: &str) -> (String, Option<String>) {
    const OPEN: &str = "[default: ";
    if let Some(start) = help.find(OPEN)
        && let Some(len) = help[start..].find(']')
    {
        let default = help[start + OPEN.len()..start + len].to_owned();
        let meaning = format!("{}{}", help[..start].trim_end(), &help[start + len + 1..]);
        return (meaning.trim().to_owned(), Some(default));
    }
    (help.trim().to_owned(), None)
}

#[test]
fn the_settings_reference_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(FILE);
    let generated = reference();
    if std::env::var_os("SWITCHBOARD_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write docs/SETTINGS.md");
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "{FILE} is stale: run `SWITCHBOARD_BLESS=1 cargo test --test it settings_reference`"
    );
}

#[test]
fn defaults_stated_in_the_help_are_split_off() {
    assert_eq!(
        split_default("Prefix of names [default: none]"),
        ("Prefix of names".into(), Some("none".into()))
    );
    assert_eq!(
        split_default("Prefix [default: none] (Laravel's is `x_`)"),
        ("Prefix (Laravel's is `x_`)".into(), Some("none".into()))
    );
    assert_eq!(split_default("Plain"), ("Plain".into(), None));
}
