// Log in to casa's JupyterHub in Debian's Chromium and, for each example notebook given,
// open it, run all of its cells, wait for its plot and save it (outputs and all); print
// what its cells printed and save a screenshot of each. Usage:
//   node notebook.mjs HUB_URL USER PASSWORD SCREENSHOT_DIR NOTEBOOK_PATH...
// Prints "lab loaded" and "TITLE <the lab's window title>", then per notebook
// "OUT <path>: <line>" for each printed line and "PLOT OK <path>"; exits 1 at the first
// notebook whose cell fails or that shows no plot.
// After the first notebook, while its kernel and cluster still run, it opens the Dask panel,
// prints "PANEL <name>" for each cluster listed there, clicks the first, prints
// "DASHBOARD <title>" for each of the dashboard's plots the panel then offers, and opens
// the task stream ("PLOT DRAWN Task Stream" once its frame draws).
import { launchChromium, logIn } from "./lab.mjs";

const [hub, user, password, shots, ...notebooks] = process.argv.slice(2);
const browser = await launchChromium();
const shotOf = (notebook) => `${shots}/${notebook.split("/").pop().replace(".ipynb", "")}.png`;
const fail = async (page, notebook, message) => {
  await page.screenshot({ path: shotOf(notebook), fullPage: true });
  console.error(`${notebook}: ${message}`);
  await browser.close();
  process.exit(1);
};

// The kernels this lab runs, shut down through Jupyter Server's API with the page's own
// session (its _xsrf cookie), so that each notebook's kernel and Dask client go with it.
const shutDownKernels = async (page) => {
  await page.evaluate(async (base) => {
    const xsrf = (document.cookie.match(/_xsrf=([^;]+)/) || [])[1] || "";
    const headers = { "X-XSRFToken": xsrf };  // cookie-authenticated API requests need it
    const kernels = await (await fetch(`${base}/api/kernels`, { headers })).json();
    for (const k of kernels) {
      await fetch(`${base}/api/kernels/${k.id}`, { method: "DELETE", headers });
    }
  }, `/user/${user}`);
};

// The Dask panel in the left side bar: the clusters it lists, and the dashboard's plots it
// offers once the first cluster is clicked (buttons are enabled only for a connected one).
const daskPanel = async (page) => {
  current = "the Dask panel";
  await page.click(".lm-TabBar-tab[data-id='dask-dashboard-launcher']");
  const item = await page.waitForSelector(".dask-ClusterListingItem", { timeout: 60000 });
  const names = await page.$$eval(".dask-ClusterListingItem-title",
    (els) => els.map((e) => e.innerText.trim()));
  for (const name of names) console.log(`PANEL ${name}`);
  await item.click();
  const enabled = ".dask-DashboardListing-item button:not([disabled])";
  await page.waitForSelector(enabled, { timeout: 60000 }).catch(() => null);
  const plots = await page.$$eval(enabled, (els) => els.map((e) => e.value));
  for (const plot of plots) console.log(`DASHBOARD ${plot}`);
  // One plot opened in the main area: its frame draws the plot (bokeh's canvas).
  if (plots.includes("Task Stream")) {
    await page.click(".dask-DashboardListing-item button[value='Task Stream']");
    const frame = page.frameLocator(".dask-DaskDashboard-widget iframe").first();
    const drawn = await frame.locator("canvas").first().waitFor({ timeout: 60000 })
      .then(() => true).catch(() => false);
    console.log(drawn ? "PLOT DRAWN Task Stream" : "PLOT NOT DRAWN Task Stream");
  }
  await page.screenshot({ path: `${shots}/dask-panel.png`, fullPage: false });
};

// The notebook in the lab's main area (other tabs' notebooks are hidden).
const shown = ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook";
const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
let current = "login";
try {
  await logIn(page, hub, user, password);
  console.log("lab loaded");
  await page.waitForFunction(() => document.title.includes(" - "), null, { timeout: 30000 })
    .catch(() => {});
  console.log(`TITLE ${await page.title()}`);
  await page.waitForTimeout(3000);  // JupyterLab asks about news within a second or two
  if (await page.$("text=official Jupyter news")) await fail(page, "login", "the lab asked about Jupyter news");
  for (const notebook of notebooks) {
    current = notebook;
    // ?reset: a workspace of this notebook alone (the lab would reopen the previous ones).
    await page.goto(`${hub}/user/${user}/lab/tree/${notebook}?reset`);
    await page.waitForSelector(`${shown} .jp-Cell`, { timeout: 60000 });
    // A notebook without kernel metadata asks which kernel to use; take the default.
    const select = await page.waitForSelector("button:has-text('Select')", { timeout: 5000 })
      .catch(() => null);
    if (select) await select.click();
    // Wait for the kernel to be idle before running everything.
    await page.waitForSelector(".jp-Notebook-ExecutionIndicator[data-status='idle']", { timeout: 60000 })
      .catch(() => {});
    await page.click("text=Run", { timeout: 10000 });
    await page.click("text=Run All Cells", { timeout: 10000 });
    console.log(`running all cells of ${notebook}`);
    const error = `${shown} [data-mime-type='application/vnd.jupyter.error']`;
    const plot = await page.waitForSelector(`${shown} .jp-OutputArea-output img, ${error}`, { timeout: 300000 })
      .catch(() => null);
    const errors = await page.$$eval(error, (els) => els.map((e) => e.innerText));
    if (errors.length) await fail(page, notebook, "a cell failed:\n" + errors.join("\n"));
    if (!plot) await fail(page, notebook, "no plot appeared");
    await plot.scrollIntoViewIfNeeded();
    // Save it, outputs and all, as a user would: the test reads what the cells printed from
    // the file (the lab does not keep cells that are scrolled away in the page).
    await plot.click();
    await page.keyboard.press("Control+s");
    await page.waitForSelector(".lm-TabBar-tab.jp-mod-current:not(.jp-mod-dirty)", { timeout: 30000 })
      .catch(() => console.log(`${notebook} may not be saved`));
    const printed = await page.$$eval(`${shown} [data-mime-type='application/vnd.jupyter.stdout']`,
      (els) => els.map((e) => e.innerText).join("\n"));
    for (const line of printed.split("\n").filter((l) => l.trim())) console.log(`OUT ${notebook}: ${line}`);
    await page.screenshot({ path: shotOf(notebook), fullPage: false });
    console.log(`PLOT OK ${notebook}`);
    if (notebook === notebooks[0]) await daskPanel(page);
    await shutDownKernels(page).catch((e) => console.log(`kernels not shut down: ${e}`));
  }
} catch (e) {
  await fail(page, current, String(e));
}
await browser.close();
