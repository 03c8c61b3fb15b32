// Log in to casa's JupyterHub in Debian's Chromium, open a Terminal from the lab's File menu
// and type each command given, as a user types it (Enter after each); then wait until the
// file DONE exists (the last command makes it). Usage:
//   node terminal.mjs HUB_URL USER PASSWORD SCREENSHOT_DIR DONE COMMAND...
// Prints "terminal open", "typed <command>" for each, then "DONE"; exits 1 if the terminal
// does not open or DONE does not appear within 10 minutes.
import { existsSync } from "node:fs";
import { launchChromium, logIn } from "./lab.mjs";

const [hub, user, password, shots, done, ...commands] = process.argv.slice(2);
const browser = await launchChromium();
const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
const fail = async (message) => {
  await page.screenshot({ path: `${shots}/terminal.png`, fullPage: false });
  console.error(message);
  await browser.close();
  process.exit(1);
};
try {
  await logIn(page, hub, user, password);
  await page.goto(`${hub}/user/${user}/lab?reset`);
  await page.waitForSelector(".jp-LauncherCard, .lm-MenuBar-item", { timeout: 60000 });
  // File > New > Terminal, as the README says.
  await page.click(".lm-MenuBar-item:has-text('File')");
  await page.hover(".lm-Menu-item:has-text('New')");
  await page.click(".lm-Menu-item[data-command='terminal:create-new']");
  const terminal = await page.waitForSelector(".jp-Terminal .xterm", { timeout: 60000 });
  await page.waitForTimeout(2000);  // bash reads its start-up files
  await terminal.click();
  console.log("terminal open");
  for (const command of commands) {
    await page.keyboard.type(command, { delay: 2 });
    await page.keyboard.press("Enter");
    console.log(`typed ${command}`);
  }
  const deadline = Date.now() + 600000;
  while (!existsSync(done)) {
    if (Date.now() > deadline) await fail(`${done} did not appear: the commands did not finish`);
    await page.waitForTimeout(500);
  }
  await page.screenshot({ path: `${shots}/terminal.png`, fullPage: false });
  console.log("DONE");
} catch (e) {
  await fail(String(e));
}
await browser.close();
