// Log in to casa's JupyterHub in Debian's Chromium, open an example notebook, run all of
// its cells and wait for the plot; save a screenshot. Usage:
//   node notebook.mjs HUB_URL USER PASSWORD NOTEBOOK_PATH SCREENSHOT.png
import { chromium } from "playwright-core";

const [hub, user, password, notebook, screenshot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const fail = async (page, message) => {
  await page.screenshot({ path: screenshot, fullPage: true });
  console.error(message);
  await browser.close();
  process.exit(1);
};
const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
try {
  await page.goto(`${hub}/hub/login`);
  await page.fill("#username_input", user);
  await page.fill("#password_input", password);
  await page.click("#login_submit");
  await page.waitForURL(`**/user/${user}/lab**`, { timeout: 120000 });
  console.log("lab loaded");
  await page.goto(`${hub}/user/${user}/lab/tree/${notebook}`);
  await page.waitForSelector(".jp-Notebook .jp-Cell", { timeout: 60000 });
  // A notebook without kernel metadata asks which kernel to use; take the default.
  const select = await page.waitForSelector("button:has-text('Select')", { timeout: 5000 })
    .catch(() => null);
  if (select) await select.click();
  // Wait for the kernel to be idle before running everything.
  await page.waitForSelector(".jp-Notebook-ExecutionIndicator[data-status='idle']", { timeout: 60000 })
    .catch(() => {});
  await page.click("text=Run", { timeout: 10000 });
  await page.click("text=Run All Cells", { timeout: 10000 });
  console.log("running all cells");
  const plot = await page.waitForSelector(".jp-OutputArea-output img", { timeout: 240000 })
    .catch(() => null);
  const errors = await page.$$eval("[data-mime-type='application/vnd.jupyter.error']",
    (els) => els.map((e) => e.innerText));
  if (errors.length) await fail(page, "a cell failed:\n" + errors.join("\n"));
  if (!plot) await fail(page, "no plot appeared");
  await plot.scrollIntoViewIfNeeded();
  const text = await page.innerText(".jp-Notebook");
  await page.screenshot({ path: screenshot, fullPage: false });
  console.log("PLOT OK");
  console.log(text.split("\n").filter((l) => l.includes("Z peak") || l.includes("dimuon events")).join("\n"));
} catch (e) {
  await fail(page, String(e));
}
await browser.close();
