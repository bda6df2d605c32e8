// Real-browser end-to-end test of the liaison office's console (issue 15), run by
// tests/office.rs against a real `seibo-gate serve` with `[office]` on loopback.
//
// Two browsers, as in the hospital: the clerk's PC (Debian's chromium with the staff .p12
// from `seibo-gate staff add` in its NSS database) and the physician's PC (a second chromium
// profile with the .p12 the clerk downloaded from the console). Client certificates are
// auto-selected per origin through the profile preference, as in e2e.mjs.
//
// Steps: clerk signs in (staff certificate + one-time password, forced change) → Today →
// registers a physician (form 3): one-time password shown, .p12 downloaded once, a second
// download refused → grants a consent with links (forms 5 and 6, relation picker) → the
// physician signs in at the gateway and views the patient → clerk withdraws (form 7, with the
// confirmation step) → the physician is refused → the disclosure report lists both, printed
// to A4 PDF, and the CSV download → usage review, terminals → a clerk cannot open the staff
// page → a form posted without the CSRF token, or with a wrong one, is refused.
// A screenshot of every page goes to SEIBO_SHOTS; each path is printed.
//
// Environment (all required):
//   SEIBO_OFFICE_URL, SEIBO_GATE_URL   https://localhost:PORT of the console and the gateway
//   SEIBO_CA                           the site CA certificate
//   SEIBO_STAFF_P12, SEIBO_STAFF_P12_PASSWORD, SEIBO_STAFF_ID, SEIBO_STAFF_OTP
//   SEIBO_STAFF_NEW_PASSWORD           the clerk's password after the forced change
//   SEIBO_TODAY                        today in Japan, YYYY-MM-DD
//   SEIBO_WORK                         an empty scratch directory
//   SEIBO_SHOTS                        where screenshots (and the PDF, the CSV) are kept
// Exit code 0 and a last line `office: ok` when every step held; 1 otherwise.

import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const STEP_TIMEOUT_MS = 20000;
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
  console.log(`office: ✓ ${what}`);
}

function run(cmd, args) {
  return execFileSync(cmd, args, { encoding: 'utf8', timeout: 30000, stdio: ['ignore', 'pipe', 'pipe'] });
}

const office = new URL(env('SEIBO_OFFICE_URL')).origin;
const gate = new URL(env('SEIBO_GATE_URL')).origin;
const work = env('SEIBO_WORK');
const shots = env('SEIBO_SHOTS');
fs.mkdirSync(shots, { recursive: true });

// A PC: an NSS database with one .p12 and the site CA, and a profile that auto-selects the
// certificate for `origin`.
async function pc(name, p12, p12Password, origin) {
  const home = path.join(work, name, 'home');
  const nssdb = path.join(home, '.pki', 'nssdb');
  fs.mkdirSync(nssdb, { recursive: true });
  const db = `sql:${nssdb}`;
  run('certutil', ['-N', '--empty-password', '-d', db]);
  run('pk12util', ['-i', p12, '-d', db, '-W', p12Password]);
  run('certutil', ['-A', '-n', 'seibo-ca', '-t', 'C,,', '-i', env('SEIBO_CA'), '-d', db]);
  const userDataDir = path.join(work, name, 'profile');
  fs.mkdirSync(path.join(userDataDir, 'Default'), { recursive: true });
  const prefs = {
    profile: {
      content_settings: {
        exceptions: {
          auto_select_certificate: {
            [`${origin},*`]: { last_modified: '13300000000000000', setting: { filters: [{}] } },
          },
        },
      },
    },
  };
  fs.writeFileSync(path.join(userDataDir, 'Default', 'Preferences'), JSON.stringify(prefs));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync', '--lang=ja'],
    env: { ...process.env, HOME: home },
    timeout: LAUNCH_TIMEOUT_MS,
    locale: 'ja-JP',
    viewport: { width: 1100, height: 900 },
    acceptDownloads: true,
  });
  context.setDefaultTimeout(STEP_TIMEOUT_MS);
  context.setDefaultNavigationTimeout(STEP_TIMEOUT_MS);
  const page = context.pages()[0] ?? (await context.newPage());
  return { context, page };
}

const contexts = [];
let clerk;
let doctor;
let n = 0;
async function shot(page, name) {
  n += 1;
  const file = path.join(shots, `${String(n).padStart(2, '0')}-${name}.png`);
  await page.screenshot({ path: file, fullPage: true, timeout: STEP_TIMEOUT_MS });
  console.log(`office: screenshot ${file}`);
}

async function text(page) {
  return page.locator('body').innerText();
}

async function submit(page, form, urlGlob) {
  await Promise.all([page.waitForURL(urlGlob), page.locator(`${form} button[type=submit]`).first().click()]);
}

async function main() {
  clerk = await pc('clerk', env('SEIBO_STAFF_P12'), env('SEIBO_STAFF_P12_PASSWORD'), office);
  contexts.push(clerk.context);
  const p = clerk.page;

  // 1. Sign in: staff certificate, then ID and one-time password, then the forced change.
  let resp = await p.goto(`${office}/office/`);
  check(new URL(p.url()).pathname === '/office/login', 'the console leads to its sign-in page');
  check(resp.headers()['cache-control'].includes('no-store'), 'console pages are never cached (no-store)');
  check((await text(p)).includes('地域連携室 サインイン'), 'the sign-in page is in Japanese');
  await shot(p, 'signin');
  await p.fill('input[name=id]', env('SEIBO_STAFF_ID'));
  await p.fill('input[name=password]', env('SEIBO_STAFF_OTP'));
  await submit(p, 'form', '**/office/password');
  const cookie = (await clerk.context.cookies(office)).find((c) => c.name === '__Host-seibo_office');
  check(cookie && cookie.httpOnly && cookie.secure && cookie.sameSite === 'Strict', 'the console cookie is HttpOnly, Secure, SameSite=Strict');
  await shot(p, 'password-change');
  await p.fill('input[name=current]', env('SEIBO_STAFF_OTP'));
  await p.fill('input[name=new]', env('SEIBO_STAFF_NEW_PASSWORD'));
  await submit(p, 'form.box', '**/office/');
  check((await text(p)).includes('今日の閲覧'), 'after the password change the Today page is shown');
  await shot(p, 'today');

  // 2. Register a physician (form 3): one-time password once, .p12 downloadable once.
  await p.goto(`${office}/office/physicians`);
  await shot(p, 'physicians');
  await p.fill('#register input[name=form3]', '様式3-2026-041');
  await p.fill('#register input[name=id]', 'dr-office');
  await p.fill('#register input[name=name]', '野村 一郎');
  await p.fill('#register input[name=terminal]', 'office-pc');
  await submit(p, '#register', '**/office/physicians/register');
  const issuedText = await text(p);
  check(issuedText.includes('利用医を登録しました'), 'the physician is registered');
  check(issuedText.includes('受け渡しの決まり'), 'the handover rules are printed');
  const otp = (await p.locator('#otp').innerText()).trim();
  const p12Password = (await p.locator('#p12-password').innerText()).trim();
  check(otp.length === 16 && p12Password.length >= 16, 'the one-time password and the .p12 password are shown');
  await shot(p, 'registered');
  const href = await p.locator('#p12-link').getAttribute('href');
  const [download] = await Promise.all([p.waitForEvent('download'), p.click('#p12-link')]);
  const p12 = path.join(work, 'office-pc.p12');
  await download.saveAs(p12);
  const p12Bytes = fs.readFileSync(p12);
  check(p12Bytes.length > 500 && p12Bytes[0] === 0x30, `the .p12 is downloaded (${p12Bytes.length} bytes, DER)`);
  resp = await p.goto(`${office}${href}`);
  check(resp.status() === 410, 'a second download of the .p12 is refused (410)');
  check((await text(p)).includes('もうダウンロードできません'), 'the refusal says the file can no longer be downloaded');
  await shot(p, 'second-download-refused');
  check(!(await p.content()).includes(otp), 'the one-time password is not shown again');

  // 3. Grant a consent (forms 5 and 6) with a link, a relative's relation from the picker.
  await p.goto(`${office}/office/consents`);
  const options = await p.locator('#grant select[name=relation] option').allInnerTexts();
  check(options.length === 11, `the relation picker offers exactly art 8.1's ten relations (${options.length - 1})`);
  await shot(p, 'consents');
  await p.fill('#grant input[name=patient]', 'P001');
  await p.fill('#grant textarea[name=links]', 'nomura-clinic:N-778');
  await p.fill('#grant input[name=form6]', '様式6-2026-118');
  await p.fill('#grant input[name=form5]', '様式5-2026-118');
  await p.selectOption('#grant select[name=explained_by]', 'dr-office');
  await p.selectOption('#grant select[name=by]', 'relative');
  await p.selectOption('#grant select[name=relation]', 'spouse');
  await p.fill('#grant input[name=published]', env('SEIBO_TODAY'));
  await submit(p, '#grant', '**/office/consents/grant');
  check((await text(p)).includes('同意を登録しました'), 'the consent is registered');
  await shot(p, 'consent-granted');
  await p.goto(`${office}/office/consents?patient=P001`);
  const shown = await p.locator('#consent').innerText();
  check(shown.includes(env('SEIBO_TODAY')) && shown.includes('relative (spouse)'), 'the consent shows its window as dates and who signed');
  await shot(p, 'consent-shown');

  // 4. The physician views the patient through the gateway (their own PC and .p12).
  doctor = await pc('doctor', p12, p12Password, gate);
  contexts.push(doctor.context);
  const d = doctor.page;
  await d.goto(`${gate}/patients/P001/basic`);
  check(new URL(d.url()).pathname === '/.seibo/login', 'the physician reaches the gateway with the downloaded .p12');
  await d.fill('#id', 'dr-office');
  await d.fill('#password', otp);
  await Promise.all([d.waitForURL('**/.seibo/password'), d.click('button[type=submit]')]);
  await d.fill('#current', otp);
  await d.fill('#new', 'Kawa-Bridge-2026!');
  await Promise.all([d.waitForURL('**/patients/P001/basic'), d.click('button[type=submit]')]);
  resp = await d.goto(`${gate}/patients/P001/basic`);
  check(resp.status() === 200, "the physician views the consented patient's page (200)");
  await shot(d, 'physician-view');

  // 5. Withdrawal (form 7), with the confirmation step.
  await p.goto(`${office}/office/consents?patient=P001`);
  await p.fill('form[action="/office/consents/withdraw"] input[name=form7]', '様式7-2026-009');
  await p.selectOption('form[action="/office/consents/withdraw"] select[name=by]', 'patient');
  await submit(p, 'form[action="/office/consents/withdraw"]', '**/office/consents/withdraw');
  check((await text(p)).includes('確認してください'), 'the withdrawal asks for confirmation first');
  await shot(p, 'withdraw-confirm');
  await submit(p, 'form.box', '**/office/consents/withdraw');
  check((await text(p)).includes('同意を撤回しました'), 'the consent is withdrawn');
  await shot(p, 'withdrawn');
  resp = await d.goto(`${gate}/patients/P001/basic`);
  check(resp.status() === 403, 'after the withdrawal the physician is refused (403)');

  // 6. The disclosure report: both the view and the refused attempt, A4 and CSV.
  await p.goto(`${office}/office/views?patient=P001`);
  const rows = await p.locator('#views tr').allInnerTexts();
  const mine = rows.filter((r) => r.includes('dr-office') && r.includes('office-pc'));
  check(mine.some((r) => r.includes('閲覧 / viewed (200)')), 'the disclosure report lists the view');
  check(mine.some((r) => r.includes('拒否 / refused')), 'the disclosure report lists the refused attempt after the withdrawal');
  await shot(p, 'disclosure-report');
  await p.emulateMedia({ media: 'print' });
  check(!(await p.locator('header').isVisible()), 'printed, the report leaves out the menu');
  const pdf = await p.pdf({ format: 'A4', preferCSSPageSize: true, timeout: STEP_TIMEOUT_MS });
  fs.writeFileSync(path.join(shots, 'disclosure-report.pdf'), pdf);
  check(pdf.subarray(0, 5).toString('latin1') === '%PDF-', `the report prints to an A4 PDF (${pdf.length} bytes)`);
  console.log(`office: pdf ${path.join(shots, 'disclosure-report.pdf')}`);
  await p.emulateMedia({ media: 'screen' });
  const [csv] = await Promise.all([p.waitForEvent('download'), p.click('#csv-link')]);
  const csvPath = path.join(shots, 'views-P001.csv');
  await csv.saveAs(csvPath);
  const csvText = fs.readFileSync(csvPath, 'utf8');
  check(csvText.split('\r\n').filter((l) => l.includes('dr-office')).length >= 2, 'the CSV download has both lines');

  // 7. Usage review and terminals.
  await p.goto(`${office}/office/usage`);
  check((await p.locator('#usage').innerText()).includes('dr-office'), 'the usage review lists the physician');
  await shot(p, 'usage');
  await p.goto(`${office}/office/terminals`);
  check((await text(p)).includes('office-pc'), 'the terminals page lists the new terminal with its expiry');
  await shot(p, 'terminals');
  await p.goto(`${office}/office/`);
  await shot(p, 'today-after');

  // 8. A clerk cannot open the staff page.
  resp = await p.goto(`${office}/office/staff`);
  check(resp.status() === 403, 'a clerk cannot open the staff page (403)');
  check((await text(p)).includes('管理者だけが開けるページです'), 'the refusal says admins only');
  await shot(p, 'clerk-refused-staff');

  // 9. Forms without the session's CSRF token, or with a wrong one, are refused.
  for (const [what, token] of [['no', null], ['a wrong', '00'.repeat(32)]]) {
    await p.goto(`${office}/office/consents`);
    await p.evaluate((t) => {
      const f = document.querySelector('#grant');
      const c = f.querySelector('input[name=csrf]');
      if (t === null) { c.remove(); } else { c.value = t; }
    }, token);
    await p.fill('#grant input[name=patient]', 'P002');
    await p.fill('#grant input[name=form6]', 'x');
    await p.fill('#grant input[name=form5]', 'x');
    await p.selectOption('#grant select[name=explained_by]', 'dr-office');
    const [r] = await Promise.all([p.waitForResponse((x) => x.url().endsWith('/office/consents/grant')), p.locator('#grant button[type=submit]').click()]);
    check(r.status() === 403, `a form with ${what} CSRF token is refused (403)`);
  }
  check((await text(p)).includes('確認コードが一致しません'), 'the CSRF refusal page says why');
  await shot(p, 'csrf-refused');
}

let failed = false;
try {
  await main();
} catch (e) {
  failed = true;
  console.error(`office: FAILED: ${e && e.stack ? e.stack : e}`);
  for (const x of [clerk, doctor]) {
    if (x && x.page) {
      try {
        console.error(`office: at ${x.page.url()}`);
        await shot(x.page, 'failure');
      } catch (e2) {
        console.error(`office: no failure screenshot: ${e2}`);
      }
    }
  }
} finally {
  for (const c of contexts) {
    await Promise.race([c.close(), new Promise((r) => setTimeout(r, 10000))]);
  }
}
if (failed) {
  process.exit(1);
}
console.log('office: ok');
process.exit(0);
