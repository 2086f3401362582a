//! The README's "First minute", followed as a newcomer would and read from README.md itself, so
//! the README and this test cannot drift: the node of "Two commands", the token command, the
//! `--dev` page in a real headless Chromium (`tests/js/dev-page-browser.mjs`) and the `curl`
//! line run by the real curl; the event must appear on the page. And without `--dev` there is
//! neither the page nor the public API key.

use std::path::Path;
use std::time::Duration;

use crate::support::*;
use serde_json::{Value, json};

/// Where scripts/test installs Debian's chromium.
const CHROMIUM: &str = "/usr/bin/chromium";

/// Where the README's lines find the node (its default listen address); the test's node is on
/// a free port instead.
const README_ORIGIN: &str = "http://localhost:6001";

/// The public key `--dev` accepts, as the docs name it.
const DEV_API_KEY: &str = "switchboard-dev-key";

fn readme() -> String {
    let path = manifest_dir().join("README.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The text under `## heading`, up to the next `## `.
fn section<'a>(readme: &'a str, heading: &str) -> &'a str {
    let title = format!("\n## {heading}\n");
    let start = readme
        .find(&title)
        .unwrap_or_else(|| panic!("README.md has no section `## {heading}`"))
        + title.len();
    let len = readme[start..]
        .find("\n## ")
        .unwrap_or(readme.len() - start);
    &readme[start..start + len]
}

/// Every command of the section's ```sh blocks, as the shell would split it into words
/// (continuation lines joined, comments dropped).
fn shell_commands(section: &str) -> Vec<Vec<String>> {
    let mut commands = Vec::new();
    let mut rest = section;
    while let Some(open) = rest.find("```sh\n") {
        let body = &rest[open + "```sh\n".len()..];
        let close = body.find("```").expect("a closed ```sh block");
        commands.extend(
            body[..close]
                .replace("\\\n", " ")
                .lines()
                .map(words)
                .filter(|w| !w.is_empty()),
        );
        rest = &body[close + 3..];
    }
    commands
}

/// Splits one shell line into words: quotes ('…' literal, "…" with backslash escapes),
/// backslashes, `#` comments. A `$` would be an expansion this test cannot follow.
fn words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => words.extend(word.take()),
            '#' if word.is_none() => break,
            '$' | '`' => panic!("`{line}` expands a variable: the test cannot follow it"),
            '\'' => {
                let quoted: String = chars.by_ref().take_while(|&c| c != '\'').collect();
                word.get_or_insert_default().push_str(&quoted);
            }
            '"' => loop {
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => word.get_or_insert_default().extend(chars.next()),
                    Some('$' | '`') => panic!("`{line}` expands a variable"),
                    Some(c) => word.get_or_insert_default().push(c),
                    None => panic!("`{line}` has an unclosed \""),
                }
            },
            '\\' => word.get_or_insert_default().extend(chars.next()),
            c => word.get_or_insert_default().push(c),
        }
    }
    words.extend(word);
    words
}

/// The binary's arguments in `cargo run --release -- <arguments>`.
fn cargo_run_args(command: &[String]) -> Vec<&str> {
    let prefix = ["cargo", "run", "--release", "--"];
    assert!(
        command.len() > prefix.len() && command[..prefix.len()] == prefix,
        "expected `cargo run --release -- …`, the README has {command:?}"
    );
    command[prefix.len()..].iter().map(String::as_str).collect()
}

/// What a `curl -X … -H … -d … URL` line asks for.
#[derive(Debug, PartialEq)]
struct Request {
    method: String,
    url: String,
    headers: Vec<String>,
    body: Value,
}

fn request(command: &[String]) -> Request {
    assert_eq!(
        command.first().map(String::as_str),
        Some("curl"),
        "{command:?}"
    );
    let mut request = Request {
        method: "GET".into(),
        url: String::new(),
        headers: Vec::new(),
        body: Value::Null,
    };
    let mut args = command[1..].iter();
    while let Some(arg) = args.next() {
        let mut value = || args.next().cloned().expect("an option's value");
        match arg.as_str() {
            "-X" => request.method = value(),
            "-H" => request.headers.push(value()),
            "-d" => {
                let body = value();
                request.body = serde_json::from_str(&body)
                    .unwrap_or_else(|e| panic!("curl's body `{body}` is not JSON: {e}"));
            }
            url if !url.starts_with('-') => request.url = url.to_owned(),
            other => panic!("curl option {other} is new to this test: teach `request` it"),
        }
    }
    request
}

/// The line of the browser script answering with `kind` (or its error, which fails the test).
async fn answer(browser: &mut JsonLinesProcess, kind: &str) -> Value {
    // Chromium's start and each step's own waits (10 s at most) fit well within this.
    browser
        .wait_for(|l| l["type"] == kind, Duration::from_secs(20))
        .await
}

#[tokio::test]
async fn the_readme_s_first_minute_shows_the_curl_s_event_on_the_dev_page() {
    assert!(
        Path::new(CHROMIUM).is_file(),
        "{CHROMIUM} is missing: run scripts/test, which installs Debian's chromium"
    );
    let readme = readme();
    let two = shell_commands(section(&readme, "Two commands"));
    let serve = two
        .iter()
        .find(|c| c.first().is_some_and(|w| w == "cargo"))
        .expect("`## Two commands` runs the node with cargo run");
    let node = Node::spawn(&cargo_run_args(serve), &[]).await;

    let first = shell_commands(section(&readme, "First minute"));
    let [token_command, curl_command] = first.as_slice() else {
        panic!("`## First minute` should hold the token command, then curl: {first:?}");
    };

    // 1. The token, as the binary prints it.
    let output = switchboard_output(&cargo_run_args(token_command), &[]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{token_command:?}: {stderr}");
    let token = stdout.trim_end_matches('\n');
    assert!(
        token.split('.').count() == 3 && !token.contains(char::is_whitespace),
        "stdout is the token alone: {stdout:?}"
    );
    assert!(stderr.contains("public development secret"), "{stderr}");

    // 2. The page, with the token pasted.
    let page = http("GET", &format!("{}/", node.url()), &[], b"").await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let csp = page.header("content-security-policy").unwrap_or_default();
    assert!(csp.contains("script-src 'sha256-"), "{csp}");
    let mut browser = JsonLinesProcess::spawn_node(
        "dev page in chromium".into(),
        "dev-page-browser.mjs",
        "playwright-core",
        &json!({"url": format!("{}/", node.url()), "chromium": CHROMIUM, "timeout": 10_000}),
    );
    let ready = answer(&mut browser, "ready").await;
    let curl = request(curl_command);
    assert_eq!(
        ready["channel"], curl.body["channel"],
        "the page's channel is the one the README's curl publishes to"
    );
    // The page shows the README's curl line, for this node.
    let shown = ready["curl"]
        .as_str()
        .unwrap_or_default()
        .replace("\\\n", " ");
    let mut shown = request(&words(&shown));
    shown.url = shown.url.replace(&node.url(), README_ORIGIN);
    assert_eq!(shown, curl, "the page's curl line and the README's");

    browser
        .send(json!({"cmd": "connect", "token": token}))
        .await;
    let status = answer(&mut browser, "status").await;
    assert_eq!(status["state"], "subscribed", "{status}");

    // 3. The curl line, run by curl itself.
    let url = curl.url.strip_prefix(README_ORIGIN).unwrap_or_else(|| {
        panic!(
            "the README's curl goes to {}, not {README_ORIGIN}",
            curl.url
        )
    });
    let mut args: Vec<String> = curl_command[1..].to_vec();
    for arg in &mut args {
        if *arg == curl.url {
            *arg = format!("{}{url}", node.url());
        }
    }
    let curl_binary = std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("curl"))
                .find(|c| c.is_file())
        })
        .expect("curl is missing: scripts/test installs it");
    let ran = tokio::process::Command::new(curl_binary)
        .args(&args)
        .args(["--silent", "--show-error", "--write-out", "\n%{http_code}"])
        .output()
        .await
        .expect("run curl");
    let answer_text = String::from_utf8_lossy(&ran.stdout);
    assert!(
        ran.status.success() && answer_text.ends_with("\n202"),
        "curl {args:?}: {answer_text} {}",
        String::from_utf8_lossy(&ran.stderr)
    );

    // 4. The event on the page.
    browser
        .send(json!({"cmd": "event", "event": curl.body["event"]}))
        .await;
    let shown = answer(&mut browser, "event").await;
    assert_eq!(
        shown,
        json!({"type": "event", "event": curl.body["event"], "channel": curl.body["channel"],
               "payload": curl.body["data"]})
    );
    browser.exit().await;
}

#[tokio::test]
async fn without_dev_there_is_no_page_and_no_public_api_key() {
    let broadcast = |node: &Node, key: &str| {
        let url = format!("{}/api/broadcast", node.url());
        let auth = format!("Bearer {key}");
        async move {
            http(
                "POST",
                &url,
                &[
                    ("authorization", auth.as_str()),
                    ("content-type", "application/json"),
                ],
                br#"{"channel": "news", "event": "hello", "data": {}}"#,
            )
            .await
            .status
        }
    };
    let page = |node: &Node| {
        let url = format!("{}/", node.url());
        async move { http("GET", &url, &[], b"").await.status }
    };

    let production = Node::spawn(&["--jwt-secret", "s3cret"], &[]).await;
    assert_eq!(page(&production).await, 404);
    assert_eq!(broadcast(&production, DEV_API_KEY).await, 401);

    // A --dev node with a key of its own takes that key only; the page is there.
    let dev = Node::spawn(&["--dev", "--api-keys", "mine"], &[]).await;
    assert_eq!(page(&dev).await, 200);
    assert_eq!(broadcast(&dev, DEV_API_KEY).await, 401);
    assert_eq!(broadcast(&dev, "mine").await, 202);
}
