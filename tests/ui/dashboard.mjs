// Drives the dashboard in headless Chromium: run by the e2e test
// `dashboard::the_dashboard_shows_functions_events_and_dead_letters`, which
// starts the server and prepares its state. Usage:
//   node dashboard.mjs BASE_URL TOKEN SCREENSHOT_DIR
// Exits non-zero, with the reason, on the first check that fails.
import { chromium } from "playwright-core";

const [base, token, shots] = process.argv.slice(2);
if (!base || !token || !shots) {
  console.error("usage: node dashboard.mjs BASE_URL TOKEN SCREENSHOT_DIR");
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
const problems = [];
page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
page.on("console", (message) => {
  if (message.type() === "error") problems.push(`console error: ${message.text()}`);
});

function check(condition, what) {
  if (!condition) throw new Error(`check failed: ${what}`);
  console.log(`ok: ${what}`);
}

async function text(selector) {
  return (await page.locator(selector).first().textContent()).trim();
}

async function post(id, type, quiet = false) {
  const response = await fetch(`${base}/v1/events`, {
    method: "POST",
    headers: {
      Authorization: `Bearer ${token}`,
      "ce-specversion": "1.0",
      "ce-id": id,
      "ce-source": "/dashboard-test",
      "ce-type": type,
      "content-type": "application/json",
    },
    body: "{}",
  });
  if (!quiet || response.status !== 202) check(response.status === 202, `event ${id} accepted`);
}

async function tab(name) {
  await page.click(`#tabs button[data-tab="${name}"]`);
  await page.locator(`section#${name}`).waitFor({ state: "visible" });
}

try {
  // Signing in: a wrong token is refused with the reason, the right one works.
  await page.goto(`${base}/ui`);
  check(page.url().endsWith("/ui/"), "/ui redirects to /ui/");
  await page.locator("#sign-in").waitFor({ state: "visible" });
  await page.fill("#token", "sluice_wrong");
  await page.click("#sign-in-form button");
  await page.waitForFunction(() => document.querySelector("#sign-in-error").textContent.length > 0);
  check((await text("#sign-in-error")).includes("not valid"), "a wrong token is refused with the reason");
  await page.fill("#token", token);
  await page.click("#sign-in-form button");
  await page.locator("#app").waitFor({ state: "visible" });
  check(true, "signed in");
  // The refused token's 401 was expected; from here on, nothing may fail.
  problems.length = 0;

  // Overview numbers come from /v1/status.
  await page.waitForFunction(() => document.querySelector("#stat-functions").textContent === "2");
  check((await text("#stat-triggers")) === "2", "overview shows 2 triggers");
  check((await text("#health")) === "ready", "overview shows the server ready");
  if (process.env.EXPECT_CLUSTER === "1") {
    // Cluster mode: this node among the live ones, JetStream's health.
    await page.waitForFunction(() => !document.querySelector("#cluster").hidden);
    await page.waitForFunction(() => document.querySelector("#nodes-table tbody").textContent.includes("(this node)"));
    await page.waitForFunction(() => document.querySelector("#jetstream").textContent === "JetStream ok");
    check(true, "the cluster panel shows JetStream healthy");
    check(/^1 live node /.test(await text("#cluster-summary")), "the cluster panel counts the live nodes");
  } else {
    check(await page.evaluate(() => document.querySelector("#cluster").hidden), "no cluster panel in embedded mode");
  }

  // Functions, and one function's recent invocations and logs.
  await tab("functions");
  await page.locator('#functions-table tr[data-name="echo"]').waitFor();
  await page.locator('#functions-table tr[data-name="doomed"]').waitFor();
  await page.click('#functions-table tr[data-name="doomed"]');
  await page.locator("#function-detail").waitFor({ state: "visible" });
  await page.locator("#invocations-table tbody tr").first().waitFor();
  check((await text("#invocations-table tbody tr")).includes("guest_error"), "recent invocations show the failures");
  check((await text("#function-settings")).includes("FAIL_FIRST"), "settings are shown");

  // Live events: post while watching; the accepted event and its delivery appear.
  await tab("events");
  await page.waitForFunction(() => document.querySelector("#stream-state").textContent === "live");
  await post("ui-1", "job");
  await page.locator('#events-table tr[data-id="ui-1"][data-kind="accepted"]').waitFor({ timeout: 10000 });
  await page.locator('#events-table tr[data-id="ui-1"][data-kind="delivered"]').waitFor({ timeout: 10000 });
  check((await text('#events-table tr[data-id="ui-1"][data-kind="accepted"]')).includes("matched: echo"), "the stream shows the event and the triggers it matched");
  if (process.env.EXPECT_CLUSTER !== "1") {
    // Its id links to its trace: the trigger it matched, the attempt, the reply.
    await page.click('#events-table tr[data-id="ui-1"][data-kind="accepted"] a.trace-link');
    await page.waitForFunction(() => document.querySelector("#trace-body").textContent.includes("delivered after"), null, { timeout: 10000 });
    const trace = await text("#trace-body");
    check(trace.includes("match  echo") && trace.includes("miss   doomed"), `the trace names each trigger's verdict: ${trace}`);
    check(trace.includes("caused event ui-1-echo"), `the trace lists the reply: ${trace}`);
  }
  await page.screenshot({ path: `${shots}/dashboard-events.png`, fullPage: true });

  // Triggers with readiness and counts (1 before the page opened, 1 now).
  await tab("triggers");
  await page.waitForFunction(() => {
    const cell = document.querySelector('#triggers-table tr[data-name="echo"] td.delivered');
    return cell && Number(cell.textContent) >= 2;
  }, null, { timeout: 10000 });
  check((await text('#triggers-table tr[data-name="echo"]')).includes("ready"), "the trigger is ready");
  check((await text('#triggers-table tr[data-name="echo"] td.matched')) === "2", "the trigger's match count");
  // Schedules, with their next firing (03:00 in Berlin is 01:00 or 02:00 UTC).
  await page.locator('#schedules-table tr[data-name="nightly"]').waitFor();
  check((await text('#schedules-table tr[data-name="nightly"]')).includes("Europe/Berlin"), "the schedule's time zone");
  check((await text('#schedules-table tr[data-name="nightly"] td.last-fired')) === "never", "the schedule has not fired");
  check(!(await text('#schedules-table tr[data-name="nightly"] td.sink')).includes("not ready"), "a broker sink is ready");
  check((await text('#schedules-table tr[data-name="orphan"] td.sink')).includes("not ready"), "a missing function sink is not ready");
  const next = await page.locator('#schedules-table tr[data-name="nightly"] td.next').getAttribute("title");
  check([1, 2].includes(new Date(next).getUTCHours()) && new Date(next) > new Date(), `the next firing is the coming 03:00 in Berlin (${next})`);

  // Dead letters: replay one (it fails again: a new dead letter), delete it.
  await tab("deadletters");
  const first = page.locator("#deadletters-table tbody tr").first();
  await first.waitFor();
  const id = await first.getAttribute("data-id");
  check((await first.textContent()).includes("doomed"), `dead letter ${id} is listed with its trigger`);
  await page.click(`button.replay[data-id="${id}"]`);
  await page.waitForFunction(() => document.querySelector("#message").textContent.includes("replayed"));
  await page.waitForFunction((old) => {
    const rows = [...document.querySelectorAll("#deadletters-table tbody tr")];
    return rows.length === 1 && rows[0].dataset.id !== old;
  }, id, { timeout: 15000 });
  const again = await page.locator("#deadletters-table tbody tr").first().getAttribute("data-id");
  check(again !== id, `replayed, failed again, dead-lettered again as ${again}`);
  await page.click(`button.delete[data-id="${again}"]`);
  await page.locator("#deadletters-empty").waitFor({ state: "visible" });
  check(true, "deleted: no dead letters left");

  // Charts fill in from /metrics.
  await tab("overview");
  // Keep events coming until the charts show a current rate.
  let sending = true;
  const sender = (async () => {
    for (let i = 2; sending; i++) {
      await post(`ui-${i}`, "job", true);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  })();
  await page.waitForFunction(() => {
    const line = document.querySelector("#chart-events polyline");
    return line && line.getAttribute("points").split(" ").length >= 4
      && Number(document.querySelector("#now-events").textContent) > 0
      && Number(document.querySelector("#now-invocations").textContent) > 0;
  }, null, { timeout: 20000 });
  sending = false;
  await sender;
  check(true, "the charts show the event and invocation rates");
  check(Number(await text("#stat-deadletters")) === 0, "overview counts the dead letters");
  await page.screenshot({ path: `${shots}/dashboard.png`, fullPage: true });

  check(problems.length === 0, `no errors in the page (${problems.join("; ")})`);
} catch (error) {
  console.error(error.message);
  for (const problem of problems) console.error(problem);
  await page.screenshot({ path: `${shots}/dashboard-failure.png`, fullPage: true }).catch(() => {});
  await browser.close();
  process.exit(1);
}
await browser.close();
