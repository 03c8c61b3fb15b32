// What the browser scripts share: Debian's Chromium, and logging in to casa's JupyterHub
// through its login form until the user's lab has loaded.
import { chromium } from "playwright-core";

export const launchChromium = () => chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});

export const logIn = async (page, hub, user, password) => {
  await page.goto(`${hub}/hub/login`);
  await page.fill("#username_input", user);
  await page.fill("#password_input", password);
  await page.click("#login_submit");
  await page.waitForURL(`**/user/${user}/lab**`, { timeout: 120000 });
};
