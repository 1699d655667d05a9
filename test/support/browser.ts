import { existsSync } from 'node:fs';
import type { TestContext } from 'node:test';
import { type Browser, chromium, type Page } from 'playwright-core';

/**
 * A real headless Chromium for the dashboard and browser-client tests, driven by playwright-core.
 * The browser is Debian's (`apt-get install chromium`; .ci/run installs it), never one downloaded
 * by Playwright; `ROAM_CHROMIUM` points at another binary.
 */
export const CHROMIUM = process.env.ROAM_CHROMIUM ?? '/usr/bin/chromium';

/**
 * Why the browser tests cannot run here, or undefined when they can. Outside CI a missing
 * Chromium skips them (with this reason); in CI (`CI` set) it fails them.
 */
export function browserMissing(): string | undefined {
  if (existsSync(CHROMIUM) || process.env.CI) return undefined;
  return `no Chromium at ${CHROMIUM} (apt-get install chromium, or set ROAM_CHROMIUM)`;
}

/** Launches Chromium; it is closed after the test (or suite) whose context is given. */
export async function launchBrowser(t: Pick<TestContext, 'after'>): Promise<Browser> {
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-dev-shm-usage'],
  });
  t.after(() => browser.close());
  return browser;
}

export interface TestPage {
  page: Page;
  /** Uncaught exceptions and console errors the page produced, except failed loads (see `failed`). */
  errors: string[];
  /** Responses with a status of 400 or more, as `<status> <path>` (Chromium logs each as a console error). */
  failed: string[];
}

/**
 * A fresh page (its own context: storage, cookies) in `browser`, recording the page's uncaught
 * exceptions and console errors; closed after the test.
 */
export async function openPage(browser: Browser, t: Pick<TestContext, 'after'>): Promise<TestPage> {
  const context = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
  t.after(() => context.close());
  const page = await context.newPage();
  // Generous: two cores shared with other test files and a whole cluster of processes.
  page.setDefaultTimeout(45_000);
  const errors: string[] = [];
  const failed: string[] = [];
  page.on('pageerror', (err) => errors.push(`pageerror: ${err.message}`));
  page.on('console', (msg) => {
    if (msg.type() === 'error' && !msg.text().startsWith('Failed to load resource'))
      errors.push(`console: ${msg.text()}`);
  });
  page.on('response', (res) => {
    if (res.status() >= 400) {
      const u = new URL(res.url());
      failed.push(`${res.status()} ${u.pathname}${u.search}`);
    }
  });
  return { page, errors, failed };
}
