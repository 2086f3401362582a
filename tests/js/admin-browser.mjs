// The admin page in a real headless Chromium (Debian's `chromium`, driven by
// playwright-core), scripted by tests/admin.rs over JSON lines.
//
// Usage: node admin-browser.mjs '<json config>'
//
// Config (argv[2]):
//   url        the node's origin, e.g. "http://127.0.0.1:6001" (required)
//   chromium   the browser binary, default "/usr/bin/chromium"
//   timeout    ms any one wait may take, default 10000
//
// Output, one JSON object per line on stdout:
//   {"type":"ready","login":bool}            the page loaded; whether it shows the login form
//   {"type":"login","ok":bool,"error":..}     after "login": the dashboard, or the form's error
//   {"type":"connections","node":n,"cluster":n}   the counts the page shows
//   {"type":"presence","members":[..]}       the user ids the presence panel lists
//   {"type":"screenshot","path":..}          {"type":"error","message":..}
//
// Commands, one JSON object per line on stdin:
//   {"cmd":"login","token":T}         types T into the form and submits it
//   {"cmd":"connections","atLeast":N?,"atMost":N?}   waits until the page's node count is
//                                     within the bounds (the page polls every second)
//   {"cmd":"presence","channel":C}   clicks C in the top-channels table and waits for
//                                     its members
//   {"cmd":"screenshot","path":P}     saves a full-page PNG
//   {"cmd":"exit"}
// The script exits 0 on "exit" or when stdin closes. The plumbing is lines.mjs.

import { launchChromium } from "./browser.mjs";
import { out, readConfig, runCommands } from "./lines.mjs";

const config = readConfig();
const timeout = config.timeout ?? 10000;

const browser = await launchChromium(config, timeout);
const page = await browser.newPage({ viewport: { width: 1360, height: 1000 } });
page.setDefaultTimeout(timeout);
// The page's own errors (a script error, a CSP refusal) are failures worth seeing.
page.on("pageerror", (err) => out({ type: "error", message: `page: ${err.message}` }));
page.on("console", (msg) => {
  if (msg.type() === "error") out({ type: "console", text: msg.text() });
});

await page.goto(`${config.url}/admin`);
await page.waitForSelector("#login:not([hidden]), #dashboard:not([hidden])");
out({ type: "ready", login: await page.isVisible("#login-form") });

// Runs one command, printing its failure as an error line rather than crashing.
function run(name, work) {
  work().catch((err) => out({ type: "error", message: `${name}: ${err.message}` }));
}

async function counts() {
  return page.evaluate(() => {
    const read = (id) => {
      const text = document.getElementById(id).textContent.replace(/,/g, "");
      return /^\d+$/.test(text) ? Number(text) : null;
    };
    return { node: read("node-connections"), cluster: read("cluster-connections") };
  });
}

runCommands(
  {
    login: (cmd) =>
      run("login", async () => {
        await page.fill("#login-token", cmd.token);
        // Submitting makes the page read the overview with the token; its answer decides.
        const [answer] = await Promise.all([
          page.waitForResponse((r) => r.url().endsWith("/admin/api/overview")),
          page.click("[data-testid=login-submit]"),
        ]);
        await page.waitForFunction(
          (ok) => {
            const error = document.getElementById("login-error").textContent;
            const shown = document.getElementById("node-connections").textContent;
            const dashboard = !document.getElementById("dashboard").hidden;
            return ok ? dashboard && /\d/.test(shown) : error !== "";
          },
          answer.ok(),
        );
        const error = await page.textContent("#login-error");
        out({ type: "login", ok: error === "" && (await page.isVisible("#dashboard")), error });
      }),
    connections: (cmd) =>
      run("connections", async () => {
        const atLeast = cmd.atLeast ?? 0;
        const atMost = cmd.atMost ?? Number.MAX_SAFE_INTEGER;
        await page.waitForFunction(
          ([low, high]) => {
            const text = document.getElementById("node-connections").textContent;
            const n = /^\d+$/.test(text) ? Number(text) : null;
            return n !== null && n >= low && n <= high;
          },
          [atLeast, atMost],
        );
        out({ type: "connections", ...(await counts()) });
      }),
    presence: (cmd) =>
      run("presence", async () => {
        await page.getByRole("button", { name: cmd.channel, exact: true }).click();
        await page.waitForSelector("#presence-members li");
        const members = await page.$$eval("#presence-members li .mono", (items) =>
          items.map((item) => item.textContent),
        );
        out({ type: "presence", members });
      }),
    screenshot: (cmd) =>
      run("screenshot", async () => {
        await page.screenshot({ path: cmd.path, fullPage: true });
        out({ type: "screenshot", path: cmd.path });
      }),
  },
  () => {
    browser.close().catch(() => {});
  },
);
