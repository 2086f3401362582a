// The --dev page (src/dev/page.html) in a real headless Chromium (Debian's `chromium`, driven
// by playwright-core), used as the README's "First minute" says; scripted by
// tests/first_minute.rs over JSON lines.
//
// Usage: node dev-page-browser.mjs '<json config>'
//
// Config (argv[2]):
//   url        the page's address, e.g. "http://127.0.0.1:6001/" (required)
//   chromium   the browser binary, default "/usr/bin/chromium"
//   timeout    ms any one wait may take, default 10000
//
// Output, one JSON object per line on stdout:
//   {"type":"ready","channel":C,"curl":T}   the page loaded: its channel field and curl line
//   {"type":"status","state":S,"text":T}    after "connect": the status line once it settles
//                                           (subscribed, closed or error)
//   {"type":"event","event":E,"channel":C,"payload":P}   the first row of event E the page shows
//   {"type":"error","message":..}           a failure, or an error of the page itself
//
// Commands, one JSON object per line on stdin:
//   {"cmd":"connect","token":T}   pastes T into the token field and presses Connect
//   {"cmd":"event","event":E}     waits until the page lists an event E
//   {"cmd":"exit"}
// The script exits 0 on "exit" or when stdin closes. The plumbing is lines.mjs.

import { launchChromium } from "./browser.mjs";
import { out, readConfig, runCommands } from "./lines.mjs";

const config = readConfig();
const timeout = config.timeout ?? 10000;

const browser = await launchChromium(config, timeout);
const page = await browser.newPage();
page.setDefaultTimeout(timeout);
// A script error or a CSP refusal (a wrong hash blocks the whole script) fails the test.
page.on("pageerror", (err) => out({ type: "error", message: `page: ${err.message}` }));
page.on("console", (msg) => {
  if (msg.type() === "error") out({ type: "error", message: `console: ${msg.text()}` });
});

await page.goto(config.url);
out({
  type: "ready",
  channel: await page.inputValue("#channel"),
  curl: await page.textContent("#curl"),
});

// Runs one command, printing its failure as an error line rather than crashing.
function run(name, work) {
  work().catch((err) => out({ type: "error", message: `${name}: ${err.message}` }));
}

runCommands(
  {
    connect: (cmd) =>
      run("connect", async () => {
        await page.fill("#token", cmd.token);
        await page.click("#connect-button");
        await page.waitForSelector(
          '#status[data-state="subscribed"], #status[data-state="closed"], #status[data-state="error"]',
        );
        const status = page.locator("#status");
        out({
          type: "status",
          state: await status.getAttribute("data-state"),
          text: await status.textContent(),
        });
      }),
    event: (cmd) =>
      run("event", async () => {
        const row = page.locator(`#events li[data-type="${cmd.event}"]`).first();
        await row.waitFor();
        out({
          type: "event",
          event: await row.locator("strong").textContent(),
          channel: (await row.locator("span").textContent()).replace(/^ on /, ""),
          payload: JSON.parse(await row.locator("pre").textContent()),
        });
      }),
  },
  () => {
    browser.close().catch(() => {});
  },
);
