// Test helpers: a real `pyxis serve` on a random loopback port with its own
// data directory and token (as tests/support/lib.rs starts one), and Debian's
// Chromium driven headless by playwright-core.

import { spawn } from "node:child_process";
import { randomBytes, randomInt } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const TARGET = process.env.CARGO_TARGET_DIR ? resolve(process.env.CARGO_TARGET_DIR) : join(ROOT, "target");
export const ARTEFACTS = TARGET;

export const PYXIS_BIN = process.env.PYXIS_BIN ?? join(TARGET, "debug", "pyxis");
export const CHROMIUM = process.env.PYXIS_CHROMIUM ?? "/usr/bin/chromium";

function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.once("error", fail);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Start `pyxis serve`; resolves once /healthz answers. */
export async function startServer(settings = {}) {
  const port = await freePort();
  const dataDir = mkdtempSync(join(tmpdir(), "pyxis-web-test-"));
  const token = `test-token-${randomBytes(8).toString("hex")}`;
  const env = {
    ...process.env,
    PYXIS_LISTEN: `127.0.0.1:${port}`,
    PYXIS_DATA_DIR: dataDir,
    PYXIS_TOKEN: token,
    PYXIS_UID_BASE: String(300_000 + randomInt(500) * 1000),
    PYXIS_POOL_MIN_IDLE: "1",
    ...settings,
  };
  const quiet = !!process.env.PYXIS_TEST_QUIET;
  const child = spawn(PYXIS_BIN, ["serve"], { env, stdio: ["ignore", quiet ? "ignore" : "inherit", quiet ? "ignore" : "inherit"] });
  let exited = null;
  child.once("exit", (code, signal) => (exited = { code, signal }));
  const base = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 300_000;
  for (;;) {
    if (exited) throw new Error(`pyxis serve exited early: ${JSON.stringify(exited)}`);
    try {
      const r = await fetch(`${base}/healthz`);
      if (r.ok) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error("pyxis serve did not become healthy");
    await sleep(100);
  }
  return {
    base,
    token,
    /** Call the API directly, with the token. */
    api(path, init = {}) {
      return fetch(`${base}${path}`, {
        ...init,
        headers: { Authorization: `Bearer ${token}`, ...(init.headers ?? {}) },
      });
    },
    async stop() {
      if (!exited) {
        child.kill("SIGTERM");
        const t0 = Date.now();
        while (!exited && Date.now() - t0 < 20_000) await sleep(50);
        if (!exited) child.kill("SIGKILL");
      }
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/**
 * Debian's Chromium, headless, with a fresh profile (Playwright passes it as
 * --user-data-dir) and no background traffic. Returns a browser context.
 */
export async function launchBrowser(options = {}) {
  const profile = mkdtempSync(join(tmpdir(), "pyxis-web-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    acceptDownloads: true,
    viewport: { width: 1366, height: 900 },
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
    ...options,
  });
  const close = context.close.bind(context);
  context.close = async () => {
    await close();
    rmSync(profile, { recursive: true, force: true });
  };
  return context;
}
