// Debian's Chromium under playwright-core, as the browser tests start it: headless, at
// config.chromium (default /usr/bin/chromium). Failing to start ends the script through
// lines.mjs's `fail`, so the test sees an error line.

import { chromium } from "playwright-core";
import { fail } from "./lines.mjs";

export async function launchChromium(config, timeout) {
  const args = [];
  // Chromium's sandbox cannot start as root (a CI container); the pages are our own.
  if (process.getuid?.() === 0) args.push("--no-sandbox");
  try {
    return await chromium.launch({
      executablePath: config.chromium ?? "/usr/bin/chromium",
      headless: true,
      args,
      timeout,
    });
  } catch (err) {
    fail(`cannot start chromium: ${err.message}`);
  }
}
