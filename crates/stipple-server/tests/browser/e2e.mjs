// End to end in a real headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core):
// a person generates, watches progress, cancels, downloads, copies, shares, signs up, saves and
// sees history, at phone and desktop widths. Screenshots go to $ARTIFACTS (test artifacts).
//
// Usage: STIPPLE_BIN=target/release/stipple ARTIFACTS=target/test-artifacts/browser node e2e.mjs
import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, "../../../..");
const bin = resolve(repo, process.env.STIPPLE_BIN || "target/release/stipple");
const artifacts = resolve(repo, process.env.ARTIFACTS || "target/test-artifacts/browser");
const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";
mkdirSync(artifacts, { recursive: true });

let passed = 0;
let failed = 0;

/** Start `stipple serve` on a free port with a fresh data folder; resolves to its base URL. */
function startServer() {
  const dataDir = mkdtempSync(join(tmpdir(), "stipple-e2e-"));
  const child = spawn(bin, ["serve", "--addr", "127.0.0.1:0", "--data-dir", dataDir, "--model", join(repo, "testdata/vectors/models/sd_tiny")], {
    cwd: repo,
    env: { ...process.env, STIPPLE_PREVIEW_EVERY: "1" },
    stdio: ["ignore", "ignore", "pipe"],
  });
  return new Promise((ok, fail) => {
    let err = "";
    const timer = setTimeout(() => fail(new Error(`server did not start: ${err}`)), 60000);
    child.stderr.on("data", (d) => {
      err += d.toString();
      const m = err.match(/serving on (http:\/\/[0-9.:]+)/);
      if (m) {
        clearTimeout(timer);
        ok({ base: m[1], stop: () => { child.kill("SIGTERM"); rmSync(dataDir, { recursive: true, force: true }); } });
      }
    });
    child.on("exit", (code) => fail(new Error(`server exited (${code}): ${err}`)));
  });
}

async function setRange(page, selector, value) {
  await page.$eval(selector, (el, v) => {
    el.value = String(v);
    el.dispatchEvent(new Event("input", { bubbles: true }));
  }, value);
}

async function generate(page, prompt, steps) {
  await page.fill("#prompt", prompt);
  if (!(await page.$eval("#advanced", (d) => d.open))) await page.click("#advanced summary");
  await setRange(page, "#steps", steps);
  await page.click("#btn-generate");
}

async function scenario(name, viewport, fn) {
  const server = await startServer();
  const browser = await chromium.launch({
    executablePath: chromiumPath,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const context = await browser.newContext({ viewport, deviceScaleFactor: 1, isMobile: viewport.width < 500, hasTouch: viewport.width < 500, acceptDownloads: true });
  await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: server.base });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  const shot = (label) => page.screenshot({ path: join(artifacts, `${name}-${label}.png`), fullPage: true });
  try {
    await fn({ page, context, base: server.base, shot });
    // 404s of probes are expected; anything else logged as an error is a bug.
    assert.deepEqual(errors.filter((e) => !e.includes("404")), [], "no script errors");
    console.log(`ok: ${name}`);
    passed += 1;
  } catch (e) {
    failed += 1;
    console.error(`FAILED: ${name}: ${e.stack || e}`);
    await shot("failure").catch(() => {});
  } finally {
    await browser.close();
    server.stop();
  }
}

async function journey({ page, context, base, shot }, who) {
  await page.goto(base + "/");
  await page.waitForFunction(() => document.querySelector("#price").textContent.includes("tokens"));
  assert.match(await page.textContent("#balance"), /2,500 tokens left today/);
  assert.equal(await page.$eval("#advanced", (d) => d.open), false, "advanced settings start collapsed");
  // Every form control has a label.
  const unlabeled = await page.$$eval("input, select, textarea", (els) => els.filter((e) => !e.labels || e.labels.length === 0).map((e) => e.id));
  assert.deepEqual(unlabeled, []);
  // Nothing is wider than the screen.
  assert.ok(await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth), "no horizontal scrolling");
  await shot("1-start");

  // Generate, watch progress with a preview, get the result.
  await generate(page, "a lighthouse at dusk", 30);
  await page.waitForSelector("#progress:not([hidden])");
  await page.waitForFunction(() => /Step \d+ of 30/.test(document.querySelector("#progress-text").textContent));
  await page.waitForSelector("#preview:not([hidden])");
  await shot("2-progress");
  await page.waitForSelector("#result:not([hidden])", { timeout: 60000 });
  const meta = await page.textContent("#result-meta");
  assert.match(meta, /seed \d+/);
  assert.match(await page.getAttribute("#seed", "placeholder"), /last: \d+/, "the seed used is shown");
  assert.ok(await page.$eval("#result-img", (img) => img.complete && img.naturalWidth > 0), "the image loads");
  await shot("3-result");

  // Download.
  const [download] = await Promise.all([page.waitForEvent("download"), page.click("#btn-download")]);
  assert.match(download.suggestedFilename(), /^stipple-\d+\.png$/);

  // Copy (image to clipboard).
  await page.click("#btn-copy");
  await page.waitForFunction(() => /copied|cannot copy/.test(document.querySelector("#message").textContent));

  // Share: a public page anyone can open.
  await page.click("#btn-share");
  await page.waitForSelector("#share-out:not([hidden])");
  const shareUrl = await page.inputValue("#share-url");
  assert.match(shareUrl, /\/s\/[A-Za-z0-9_-]{22,}$/);
  const stranger = await context.browser().newPage();
  await stranger.goto(shareUrl);
  assert.match(await stranger.getAttribute('meta[property="og:image"]', "content"), /\/s\/.*\.png$/);
  await stranger.close();

  // Cancel a long generation.
  await generate(page, "a very long one", 100);
  await page.waitForFunction(() => /Step \d+ of 100/.test(document.querySelector("#progress-text").textContent));
  await page.click("#btn-cancel");
  await page.waitForFunction(() => document.querySelector("#message").textContent.includes("Cancelled"));

  // Sign up, generate, save, see it in History, delete another.
  await page.click("#btn-auth");
  await page.fill("#email", `${who}@example.org`);
  await page.fill("#password", "correct horse battery");
  await shot("4-signup");
  await page.click("#btn-signup");
  await page.waitForFunction((w) => document.querySelector("#who").textContent.includes(w), who);
  assert.match(await page.textContent("#balance"), /5,000 tokens left today/);
  for (const prompt of ["keep me", "delete me"]) {
    await generate(page, prompt, 3);
    await page.waitForFunction((p) => !document.querySelector("#result").hidden && document.querySelector("#result-img").alt.includes(p), prompt);
    if (prompt === "keep me") {
      await page.click("#btn-save");
      await page.waitForFunction(() => document.querySelector("#btn-save").textContent === "Saved");
    }
  }
  await page.click("#nav-history");
  // The image made before signing up is in the history too.
  await page.waitForFunction(() => document.querySelectorAll("#history-list li img").length === 3);
  await shot("5-history");
  const deleteButton = page.locator('#history-list button[aria-label="Delete: delete me"]');
  await deleteButton.click();
  await page.waitForFunction(() => document.querySelectorAll("#history-list li img").length === 2);
  await page.reload();
  await page.waitForFunction(() => document.querySelectorAll("#history-list li img").length === 2);
  const prompts = await page.$$eval("#history-list li .prompt", (ps) => ps.map((p) => p.textContent));
  assert.deepEqual(prompts, ["keep me", "a lighthouse at dusk"]);

  // Keyboard: the Generate button is reachable with Tab from the prompt.
  await page.click("#nav-create");
  // The view switches on the hash change; focusing a still-hidden prompt would do nothing.
  await page.waitForSelector("#prompt", { state: "visible" });
  await page.focus("#prompt");
  await page.keyboard.press("Tab");
  assert.equal(await page.evaluate(() => document.activeElement.id), "btn-generate");
}

await scenario("phone-360", { width: 360, height: 740 }, (ctx) => journey(ctx, "phone"));
await scenario("desktop-1280", { width: 1280, height: 800 }, (ctx) => journey(ctx, "desktop"));
console.log(`browser: ${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
