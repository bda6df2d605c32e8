// Real-browser end-to-end test of the physician's sign-in (issue 4; rules art 6.3, 8, 13.1,
// 13.2.5), run by tests/browser.rs against a real `seibo-gate serve` on loopback.
//
// Debian's chromium (no browser download) is driven by playwright-core. Chromium's own TLS
// stack does the mutual-TLS handshake with the very PKCS#12 that `seibo-gate terminal add`
// wrote, imported with pk12util into the NSS database under the browser's $HOME/.pki/nssdb
// and auto-selected for the gateway's origin through the profile preference
// `profile.content_settings.exceptions.auto_select_certificate` — as on a physician's PC.
//
// Steps: open an EMR page → sent to the sign-in page (screenshot) → sign in with the one-time
// password → forced password change → back on the page first asked for: the consented
// patient's page → printed, it shows only the notice (screenshot) → "who am I" in words, and
// printed → `/` leads to the start page → a non-consented patient is refused with the Japanese
// page (screenshot) → idle past the timeout → back on the sign-in page (screenshot).
//
// Environment (all required):
//   SEIBO_URL            https://localhost:PORT (the gateway; loopback only)
//   SEIBO_CA             the terminal CA certificate (trusted for the gateway's server cert)
//   SEIBO_P12            the terminal's .p12 written by `terminal add`
//   SEIBO_P12_PASSWORD   its password, as `terminal add` printed it
//   SEIBO_ID             the physician's ID
//   SEIBO_PASSWORD       the one-time initial password
//   SEIBO_NEW_PASSWORD   the password chosen at the forced change
//   SEIBO_PATIENT_NAME   text the consented patient's page shows
//   SEIBO_ALLOWED        path of a consented patient's EMR page
//   SEIBO_REFUSED        path of a non-consented patient's EMR page
//   SEIBO_HOME           the site's start page (`[site] home`), where `/` leads
//   SEIBO_IDLE_WAIT_MS   how long to stay idle (longer than idle_timeout_secs)
//   SEIBO_WORK           an empty scratch directory (browser HOME and profile)
//   SEIBO_ARTIFACTS      where screenshots are kept
// Exit code 0 and a last line `e2e: ok` when every step held; 1 otherwise.

import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const STEP_TIMEOUT_MS = 15000;
const LAUNCH_TIMEOUT_MS = 60000;

function env(name) {
  const v = process.env[name];
  if (v === undefined || v === '') {
    throw new Error(`environment variable ${name} is required`);
  }
  return v;
}

function check(cond, what) {
  if (!cond) {
    throw new Error(`check failed: ${what}`);
  }
  console.log(`e2e: ✓ ${what}`);
}

function run(cmd, args) {
  // Bounded: NSS tools never prompt here (passwords are given), but never hang either.
  return execFileSync(cmd, args, { encoding: 'utf8', timeout: 30000, stdio: ['ignore', 'pipe', 'pipe'] });
}

const url = new URL(env('SEIBO_URL'));
if (!['localhost', '127.0.0.1', '[::1]'].includes(url.hostname)) {
  throw new Error(`SEIBO_URL must be on loopback, not ${url.hostname}`);
}
const origin = url.origin;
const work = env('SEIBO_WORK');
const artifacts = env('SEIBO_ARTIFACTS');
fs.mkdirSync(artifacts, { recursive: true });

// 1. The physician's PC: an NSS database under the browser's $HOME with the terminal's .p12
//    and the terminal CA trusted for the gateway's server certificate.
const home = path.join(work, 'home');
const nssdb = path.join(home, '.pki', 'nssdb');
fs.mkdirSync(nssdb, { recursive: true });
const db = `sql:${nssdb}`;
run('certutil', ['-N', '--empty-password', '-d', db]);
run('pk12util', ['-i', env('SEIBO_P12'), '-d', db, '-W', env('SEIBO_P12_PASSWORD')]);
run('certutil', ['-A', '-n', 'seibo-ca', '-t', 'C,,', '-i', env('SEIBO_CA'), '-d', db]);
const listed = run('certutil', ['-L', '-d', db]);
console.log(listed.trim());
const keys = run('certutil', ['-K', '-d', db, '-f', '/dev/null']);
check(/rsa|ec|key/i.test(keys), 'the .p12 key is in the NSS database');

// 2. A fresh profile whose preferences auto-select the client certificate for the gateway.
const userDataDir = path.join(work, 'profile');
fs.mkdirSync(path.join(userDataDir, 'Default'), { recursive: true });
const prefs = {
  profile: {
    content_settings: {
      exceptions: {
        auto_select_certificate: {
          [`${origin},*`]: {
            last_modified: '13300000000000000',
            setting: { filters: [{}] },
          },
        },
      },
    },
  },
};
fs.writeFileSync(path.join(userDataDir, 'Default', 'Preferences'), JSON.stringify(prefs));

const args = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--lang=ja',
];

let context;
let page;
async function shot(name) {
  const file = path.join(artifacts, name);
  await page.screenshot({ path: file, fullPage: true, timeout: STEP_TIMEOUT_MS });
  console.log(`e2e: screenshot ${file}`);
}

async function main() {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    args,
    env: { ...process.env, HOME: home },
    timeout: LAUNCH_TIMEOUT_MS,
    locale: 'ja-JP',
    viewport: { width: 900, height: 900 },
  });
  context.setDefaultTimeout(STEP_TIMEOUT_MS);
  context.setDefaultNavigationTimeout(STEP_TIMEOUT_MS);
  page = context.pages()[0] ?? (await context.newPage());

  const allowed = env('SEIBO_ALLOWED');
  const refused = env('SEIBO_REFUSED');

  // 3. Opening an EMR page without a session leads to the sign-in page.
  let resp = await page.goto(origin + allowed);
  const first = new URL(page.url());
  check(first.pathname === '/.seibo/login', `opening ${allowed} lands on the sign-in page (${page.url()})`);
  check(first.searchParams.get('next') === allowed, 'the sign-in page returns to the page asked for');
  check(resp !== null && resp.status() === 200, 'the sign-in page is served (200)');
  const signinText = await page.locator('body').innerText();
  check(signinText.includes('サインイン'), 'the sign-in page is in Japanese (サインイン)');
  await shot('signin.png');

  // 4. Sign in with the one-time password: the password must be changed first.
  await page.fill('#id', env('SEIBO_ID'));
  await page.fill('#password', env('SEIBO_PASSWORD'));
  await Promise.all([page.waitForURL('**/.seibo/password'), page.click('button[type=submit]')]);
  check(new URL(page.url()).pathname === '/.seibo/password', 'the one-time password leads to the password change');
  const cookies = await context.cookies(origin);
  const session = cookies.find((c) => c.name === '__Host-seibo_session');
  check(session !== undefined, 'a session cookie is set');
  check(session.httpOnly && session.secure && session.sameSite === 'Strict', 'the cookie is HttpOnly, Secure, SameSite=Strict');

  resp = await page.goto(origin + allowed);
  check(new URL(page.url()).pathname === '/.seibo/password', 'EMR pages are refused until the password is changed');

  await page.fill('#current', env('SEIBO_PASSWORD'));
  await page.fill('#new', env('SEIBO_NEW_PASSWORD'));
  // 5. Back on the page first asked for (issue 11 item 24): the consented patient's page.
  await Promise.all([page.waitForURL(`**${allowed}`), page.click('button[type=submit]')]);
  check(new URL(page.url()).pathname === allowed, `the forced password change returns to the page first asked for (${allowed})`);
  resp = await page.goto(origin + allowed);
  check(resp !== null && resp.status() === 200, `the consented patient's page ${allowed} is shown (200)`);
  check(new URL(page.url()).pathname === allowed, 'no redirect away from the EMR page');
  const emrText = await page.locator('body').innerText();
  check(emrText.includes(env('SEIBO_PATIENT_NAME')), "the EMR's page shows the patient");
  check(emrText.includes(env('SEIBO_ID')), 'the EMR was told the signed-in physician');
  const guard = await page.locator('style[media=print]').count();
  check(guard >= 1, 'the EMR page carries the print guard (art 13.2.5)');

  // 6. Printed (issue 11 item 25, art 13.2): the record is not rendered, the notice is.
  await page.emulateMedia({ media: 'print' });
  const printed = await page.evaluate(() => {
    const root = getComputedStyle(document.documentElement);
    const before = getComputedStyle(document.documentElement, '::before');
    return {
      body: getComputedStyle(document.body).display,
      root: root.display,
      content: before.content,
      display: before.display,
      visibility: before.visibility,
    };
  });
  console.log(`e2e: printed EMR page: ${JSON.stringify(printed)}`);
  check(printed.body === 'none', 'printed, the EMR record is not rendered (art 13.2)');
  check(!(await page.locator('h1').isVisible()), "printed, the EMR page's heading is hidden");
  check(
    printed.root !== 'none' && printed.display === 'block' && printed.visibility === 'visible'
      && printed.content.includes('印刷はできません') && printed.content.includes('Printing is not permitted'),
    'printed, the EMR page shows 印刷はできません / Printing is not permitted (art 13.2)',
  );
  await shot('print-emr.png');
  const pdf = await page.pdf({ format: 'A4', timeout: STEP_TIMEOUT_MS });
  check(pdf.subarray(0, 5).toString('latin1') === '%PDF-', `printing to PDF gives a document (${pdf.length} bytes), not an error`);
  await page.emulateMedia({ media: 'screen' });
  check(await page.locator('h1').isVisible(), 'on screen, the EMR page is shown again');

  // 7. "Who am I" (issue 11 item 26): the session end in Japan time, the ingress in words.
  resp = await page.goto(origin + '/.seibo/whoami');
  check(resp !== null && resp.status() === 200, 'the "who am I" page is shown (200)');
  const whoami = await page.locator('main').innerText();
  check(whoami.includes(env('SEIBO_ID')), 'the "who am I" page names the physician');
  check(/\d{4}-\d{2}-\d{2} \d{2}:\d{2} \(JST\)（あと \d+ 分 \/ \d+ min left）/.test(whoami), 'the session end is Japan time with the minutes left');
  check(!/\d{2}:\d{2}:\d{2}\.\d+\+09:00/.test(whoami), 'no RFC 3339 timestamp with fractions');
  check(whoami.includes('端末証明書') && whoami.includes('terminal certificate (mutual TLS)'), 'the connection is named in words (端末証明書)');
  await page.emulateMedia({ media: 'print' });
  check(await page.locator('.print-notice').isVisible(), 'printed, the gateway page shows the notice (art 13.2)');
  check(!(await page.locator('main').isVisible()), 'printed, the gateway page hides its text');
  check((await page.locator('.print-notice').innerText()).includes('印刷はできません'), 'the notice says 印刷はできません');
  await shot('print-whoami.png');
  await page.emulateMedia({ media: 'screen' });
  check(!(await page.locator('.print-notice').isVisible()), 'on screen, the notice is not shown');

  // 8. `/` leads to the start page (issue 11 item 24), not to the 404 page.
  resp = await page.goto(origin + '/');
  const startPage = env('SEIBO_HOME');
  check(new URL(page.url()).pathname === startPage, `opening / leads to the start page ${startPage} (${page.url()})`);
  check(resp !== null && resp.status() === 200, 'the start page is shown (200), not the 404 page');
  check(!(await page.locator('body').innerText()).includes('閲覧範囲外'), 'no "outside the viewing range" page');

  // 9. A patient without consent: the Japanese refusal page.
  resp = await page.goto(origin + refused);
  check(resp !== null && resp.status() === 403, `the non-consented patient's page ${refused} is refused (403)`);
  const refusal = await page.locator('body').innerText();
  check(refusal.includes('閲覧できません'), 'the refusal page says 閲覧できません');
  check(refusal.includes('お問い合わせ'), 'the refusal page says whom to contact');
  await shot('refused.png');

  // 10. Idle past the timeout: the next page is the sign-in page again.
  const idle = Number(env('SEIBO_IDLE_WAIT_MS'));
  console.log(`e2e: idle for ${idle} ms`);
  await page.waitForTimeout(idle);
  resp = await page.goto(origin + allowed);
  check(new URL(page.url()).pathname === '/.seibo/login', 'after the idle timeout the physician is signed out');
  await shot('signed-out.png');
}

let failed = false;
try {
  await main();
} catch (e) {
  failed = true;
  console.error(`e2e: FAILED: ${e && e.stack ? e.stack : e}`);
  if (page) {
    try {
      console.error(`e2e: at ${page.url()}`);
      await shot('failure.png');
    } catch (e2) {
      console.error(`e2e: no failure screenshot: ${e2}`);
    }
  }
} finally {
  if (context) {
    await Promise.race([context.close(), new Promise((r) => setTimeout(r, 10000))]);
  }
}
if (failed) {
  process.exit(1);
}
console.log('e2e: ok');
process.exit(0);
